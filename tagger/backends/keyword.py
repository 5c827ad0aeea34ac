"""A deterministic, dependency-free, instant tagger: tag names and our own synonyms found in the README.

A weak but real tagger: the baseline every LLM configuration must beat, and the backend that fault
tests and pipeline benchmarks use because it costs nothing.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

from tagger.backends import Generation
from tagger.prompt import Prompt

KEYWORDS_FILE = Path(__file__).resolve().parent.parent / "data" / "keywords.json"
TAGS_FILE = KEYWORDS_FILE.with_name("tags.json")
MAX_TAGS = 3


@lru_cache(maxsize=1)
def _phrases_by_tag() -> dict[str, tuple[str, ...]]:
    """Tag name → phrases that suggest it (the name itself, spelled a few ways, and synonyms)."""
    names = {str(e["id"]): " ".join(e["name"].split()).lower() for e in json.loads(TAGS_FILE.read_text())}
    synonyms: dict[str, list[str]] = json.loads(KEYWORDS_FILE.read_text()) if KEYWORDS_FILE.exists() else {}
    phrases: dict[str, tuple[str, ...]] = {}
    for tag_id, name in names.items():
        spelled = {name, name.replace("-", " "), name.replace("-", "")}
        phrases[name] = tuple(sorted(spelled | {s.lower() for s in synonyms.get(tag_id, [])}))
    return phrases


@lru_cache(maxsize=64)
def _matcher(choices: tuple[str, ...]) -> tuple[re.Pattern[str], dict[str, str]]:
    """One alternation over every phrase of every allowed tag, longest first; phrase → tag name."""
    owner: dict[str, str] = {}
    for name in choices:
        for phrase in _phrases_by_tag().get(name, (name,)):
            owner.setdefault(phrase, name)
    return re.compile(rf"(?<![\w-])(?:{_trie_alternation(owner)})(?![\w-])"), owner


def _trie_alternation(phrases: Iterable[str]) -> str:
    """The phrases as a prefix tree: the regex engine tests one branch per character instead of every
    phrase at every position (10x faster). Longer continuations come first, so it matches what the
    flat longest-first alternation matches."""
    trie: dict[str, dict] = {}
    for phrase in phrases:
        node = trie
        for char in phrase:
            node = node.setdefault(char, {})
        node[""] = {}  # a phrase ends here

    def pattern(node: dict[str, dict]) -> str:
        branches = [re.escape(char) + pattern(child) for char, child in sorted(node.items()) if char]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if "" in node else body

    return pattern(trie)


class KeywordTagger:
    name = "keyword"
    model = "keyword-v1"

    def generate(self, prompts: Sequence[Prompt]) -> list[Generation | Exception]:
        return [Generation(json.dumps({"tags": self.tag_text(p.readme, p.choices)})) for p in prompts]

    @staticmethod
    def tag_text(text: str, choices: tuple[str, ...], limit: int = MAX_TAGS) -> list[str]:
        # One matcher for every shortlist: compiling one per README's subset would cost more than matching.
        known = _phrases_by_tag()
        pattern, owner = _matcher(tuple(sorted(known)) + tuple(sorted(n for n in choices if n not in known)))
        allowed = set(choices)
        lowered = text.lower()
        scores: dict[str, float] = defaultdict(float)
        length = max(len(lowered), 1)
        for match in pattern.finditer(lowered):
            name = owner[match.group(0)]
            if name in allowed:
                # Mentions near the top (title, tagline) say more about what a repo is than later ones.
                scores[name] += 1.0 + 2.0 * (1.0 - match.start() / length)
        return [name for name, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]]

    def close(self) -> None:
        pass
