"""Keyword evidence: which tags a README names outright, by their names and our own synonyms.

One matcher serves every user of it (the keyword backend, the keyword shortlist, the benchmarks):
compiling one per README's subset of tags would cost more than matching.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from tagger.answer import MAX_TAGS
from tagger.taxonomy import Taxonomy

SYNONYMS_FILE = Path(__file__).parent / "data" / "keywords.json"


@lru_cache(maxsize=1)
def phrases_by_tag() -> dict[str, tuple[str, ...]]:
    """Tag name → phrases that suggest it (the name itself, spelled a few ways, and synonyms), for the
    shipped taxonomy; a tag of another taxonomy is found by its name alone."""
    synonyms: dict[str, list[str]] = json.loads(SYNONYMS_FILE.read_text(encoding="utf-8"))
    phrases: dict[str, tuple[str, ...]] = {}
    for tag in Taxonomy.load().tags:
        spelled = {tag.name, tag.name.replace("-", " "), tag.name.replace("-", "")}
        phrases[tag.name] = tuple(sorted(spelled | {s.lower() for s in synonyms.get(str(tag.id), [])}))
    return phrases


@lru_cache(maxsize=1)
def synonyms_by_name() -> dict[str, tuple[str, ...]]:
    """Tag name → our synonyms for it, as listed (without the name's own spellings)."""
    synonyms: dict[str, list[str]] = json.loads(SYNONYMS_FILE.read_text(encoding="utf-8"))
    return {tag.name: tuple(synonyms.get(str(tag.id), [])) for tag in Taxonomy.load().tags}


# Chinese, Japanese and Korean phrases are counted as substrings: their words are not separated by
# spaces, and the regex's word boundaries would never match inside a sentence.
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")


@lru_cache(maxsize=1)
def _cjk_phrases() -> tuple[tuple[str, str], ...]:
    """(phrase, tag name) for every CJK phrase, longest first (a longer phrase hides its parts)."""
    pairs = [(p, name) for name, phrases in phrases_by_tag().items() for p in phrases if _CJK.search(p)]
    return tuple(sorted(pairs, key=lambda pn: (-len(pn[0]), pn[0])))


@lru_cache(maxsize=64)
def _matcher(names: tuple[str, ...]) -> tuple[re.Pattern[str], dict[str, str]]:
    """One alternation over every phrase of every tag in ``names``; phrase → tag name."""
    owner: dict[str, str] = {}
    for name in names:
        for phrase in phrases_by_tag().get(name, (name,)):
            if not _CJK.search(phrase):  # CJK text has no word boundaries: see count_mentions
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


def keyword_scores(text: str, choices: Iterable[str]) -> dict[str, float]:
    """Tag name → weight of its mentions in ``text``, for the tags in ``choices`` that occur at all."""
    known = phrases_by_tag()
    allowed = set(choices)
    pattern, owner = _matcher(tuple(sorted(known)) + tuple(sorted(n for n in allowed if n not in known)))
    lowered = text.lower()
    scores: dict[str, float] = defaultdict(float)
    length = max(len(lowered), 1)
    for match in pattern.finditer(lowered):
        name = owner[match.group(0)]
        if name in allowed:
            # Mentions near the top (title, tagline) say more about what a repo is than later ones.
            scores[name] += 1.0 + 2.0 * (1.0 - match.start() / length)
    return dict(scores)


def keyword_tags(text: str, choices: Iterable[str], limit: int = MAX_TAGS) -> list[str]:
    """The ``limit`` tags of ``choices`` that ``text`` names most, strongest first."""
    ranked = sorted(keyword_scores(text, choices).items(), key=lambda kv: (-kv[1], kv[0]))
    return [name for name, _ in ranked[:limit]]


def count_mentions(text: str) -> dict[str, int]:
    """How often each tag's name or synonyms occur in ``text`` (any case), by tag name: the scoring's
    keyword signals (tagger/scoring.py). CJK phrases count as substrings, longest first."""
    pattern, owner = _matcher(tuple(sorted(phrases_by_tag())))
    lowered = text.lower()
    counts: dict[str, int] = defaultdict(int)
    for match in pattern.finditer(lowered):
        counts[owner[match.group(0)]] += 1
    if _CJK.search(lowered):
        for phrase, name in _cjk_phrases():
            found = lowered.count(phrase)
            if found:
                counts[name] += found
                lowered = lowered.replace(phrase, " ")
    return dict(counts)
