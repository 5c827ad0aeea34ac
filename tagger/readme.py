"""README cleaning and truncation: what the model reads of a repository."""

from __future__ import annotations

import hashlib
import heapq
import html
import re
from functools import lru_cache

# Code blocks longer than this many lines keep their head only: install snippets are informative,
# long listings are not, and they cost tokens.
CODE_BLOCK_KEEP_LINES = 6

_FENCE = re.compile(r"^(```|~~~)[^\n]*\n(.*?)(?:^\1[^\n]*$|\Z)", re.S | re.M)
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.S)
_HTML_BLOCK_DROP = re.compile(r"<(script|style|svg)\b.*?</\1\s*>", re.S | re.I)
_HTML_IMG = re.compile(r"<img\b[^>]*>", re.I)
_HTML_TAG = re.compile(r"</?[a-zA-Z][^>]*>")


def _within_paragraph(excluded: str) -> str:
    """A run of any characters but ``excluded``, across line breaks but never across a blank line:
    Markdown links and images do not span paragraphs, and matching them within one keeps cleaning
    paragraph-local (prepare_readme relies on it)."""
    return rf"[^{excluded}\n]*(?:\n(?![ \t]*\n)[^{excluded}\n]*)*"


_LINK_TEXT, _LINK_TARGET = _within_paragraph(r"\]"), _within_paragraph(r")")
_MD_BADGE = re.compile(rf"\[!\[{_LINK_TEXT}\]\({_LINK_TARGET}\)\]\({_LINK_TARGET}\)")
_MD_IMAGE = re.compile(rf"!\[{_LINK_TEXT}\]\({_LINK_TARGET}\)")
_MD_REF_IMAGE = re.compile(rf"!\[{_LINK_TEXT}\]\[{_LINK_TEXT}\]")
_MD_LINK = re.compile(rf"\[({_LINK_TEXT})\]\({_LINK_TARGET}\)")
_MD_REF_DEF = re.compile(r"^[ \t]*\[[^\]\n]+\]:[ \t]*\n?[ \t]*\S+.*$", re.M)  # target may go on the next line
_BARE_URL = re.compile(r"https?://\S+")
# Anchored on a newline rather than ^ with re.M: a literal first character lets the regex engine
# skip ahead to candidate lines (4x faster); clean_readme puts a newline before the first line.
_TABLE_RULE = re.compile(r"\n[ \t]*\|?[ \t]*:?-{3,}[^\n]*")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_BLANK_LINES = re.compile(r"\n\s*\n+")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_WORDISH = re.compile(r"\w+|[^\w\s]", re.U)


def readme_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _shorten_code(match: re.Match[str]) -> str:
    lines = match.group(2).rstrip("\n").split("\n")
    kept = lines[:CODE_BLOCK_KEEP_LINES]
    if len(lines) > CODE_BLOCK_KEEP_LINES:
        kept.append("...")
    return "\n".join(kept) + "\n"


def clean_readme(text: str) -> str:
    """Markdown/HTML README → compact plain text that keeps what describes the project."""
    # Each pattern runs only when the text holds the literal it cannot match without: most READMEs
    # skip most passes (this runs once per repo on the worker, next to the model).
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    if "```" in text or "~~~" in text:
        text = _FENCE.sub(_shorten_code, text)
    if "<" in text:
        if "<!--" in text:
            text = _HTML_COMMENT.sub("", text)
        text = _HTML_BLOCK_DROP.sub("", text)
    if "![" in text:
        text = _MD_BADGE.sub("", text)
    if "<" in text:
        text = _HTML_IMG.sub("", text)
    if "![" in text:
        text = _MD_IMAGE.sub("", text)
        text = _MD_REF_IMAGE.sub("", text)
    if "](" in text:
        text = _MD_LINK.sub(r"\1", text)
    if "]:" in text:
        text = _MD_REF_DEF.sub("", text)
    if "<" in text:
        text = _HTML_TAG.sub(" ", text)
    text = html.unescape(text)
    if "http" in text:
        text = _BARE_URL.sub("", text)
    if "---" in text:
        text = _TABLE_RULE.sub("\n", "\n" + text)[1:]
    # Each line loses its indentation, and runs of blanks (tabs, no-break spaces...) become one space.
    text = "\n".join(" ".join(line.split()) for line in text.split("\n"))
    text = _BLANK_LINES.sub("\n\n", text)
    return text.strip()


def estimate_tokens(text: str) -> int:
    """A fast, tokenizer-free estimate: one token per CJK character, ~1.3 per word or symbol."""
    cjk = len(_CJK.findall(text))
    return cjk + (len(_WORDISH.findall(_CJK.sub(" ", text))) * 4 + 2) // 3


_NON_SPACE = re.compile(r"\S")


@lru_cache(maxsize=16)
def _first_words(count: int) -> re.Pattern[str]:
    """Matches the first ``count`` words/symbols of _WORDISH (possessive: a word is never split)."""
    return re.compile(rf"(?:\s*+(?:\w++|[^\w\s])){{{count}}}")


def _longest_prefix_within(text: str, budget: int) -> int:
    """The length of the longest prefix of ``text`` whose :func:`estimate_tokens` is within ``budget``.

    A prefix's estimate counts the CJK characters and the word/symbol starts before its end, so it
    grows one event at a time: walk the events in order and stop at the first that goes over. One
    lazy pass over the kept head, instead of a binary search re-estimating ever-shorter prefixes."""
    if text.isascii() or not _CJK.search(text):
        # (words * 4 + 2) // 3 <= budget  <=>  words <= 3 * budget // 4: the prefix ends where the next
        # word starts after that many, found by one C-level match instead of a match object per word.
        kept = _first_words(3 * budget // 4).match(text)
        if kept is None:
            return len(text)
        over = _NON_SPACE.search(text, kept.end())
        return len(text) if over is None else over.start()
    cjk = words = 0
    events = heapq.merge(
        ((m.start(), True) for m in _CJK.finditer(text)),
        ((m.start(), False) for m in _WORDISH.finditer(_CJK.sub(" ", text))),
    )
    for position, is_cjk in events:
        if is_cjk:
            cjk += 1
        else:
            words += 1
        if cjk + (words * 4 + 2) // 3 > budget:
            return position
    return len(text)


def truncate_head(text: str, budget: int) -> str:
    """Keep the head of ``text`` within ``budget`` estimated tokens, cut at a line or word boundary."""
    text = text[: budget * 16]  # a cheap bound: past 16 characters per token is noise (hashes, minified code)
    low = _longest_prefix_within(text, budget)
    if low == len(text):
        return text
    head = text[:low]
    cut = max(head.rfind("\n"), head.rfind(" "))
    if cut > low * 0.8:
        head = head[:cut]
    return head.rstrip()


# Only the head is ever kept, so cleaning a 10 MB README need not read all of it: cleaning rarely
# removes more than this factor of characters per kept token (badges, HTML and link targets).
_RAW_CHARS_PER_TOKEN = 64
# The first slice cleaned: enough raw text for the budget in most READMEs (prose runs 4-6 characters
# per token; badges and link targets add more). The slice grows 4x each time it falls short.
_FIRST_SLICE_CHARS_PER_TOKEN = 16
_FENCE_LINE = re.compile(r"^(?:```|~~~)", re.M)


def _cut_inside_construct(text: str) -> bool:
    """Whether ``text`` (whole paragraphs) stops inside something that spans lines and that cleaning
    removes or rewrites as a whole: a code fence, an HTML comment, a script/style/svg element or an
    HTML tag. Cut there, its inside would read as prose."""
    if text.rfind("<") > text.rfind(">"):
        return True
    lowered = text.lower()
    if lowered.rfind("<!--") > lowered.rfind("-->"):
        return True
    if any(lowered.rfind(f"<{name}") > lowered.rfind(f"</{name}") for name in ("script", "style", "svg")):
        return True
    fence: str | None = None  # the open fence's marker; a fence closes with a line starting the same way
    for line in _FENCE_LINE.finditer(text):
        marker = line.group(0)
        if fence is None:
            fence = marker
        elif marker == fence:
            fence = None
    return fence is not None


_BLANK_LINE = re.compile(r"\n[ \t\r]*\n")


def _paragraph_end(text: str, size: int) -> int:
    """Where the last paragraph that ends within ``text[:size]`` ends (after its blank line); 0: none."""
    ends = [m.end() for m in _BLANK_LINE.finditer(text, max(0, size // 2), size)]
    return ends[-1] if ends else 0


def prepare_readme(text: str, budget: int) -> str:
    """What the model reads: the cleaned head of the README, within ``budget`` tokens.

    Cleans the README's first paragraphs, more of them until they yield more than the budget: this
    runs per repo next to the model, and a whole README costs several times what its head does.
    Cleaning is local to paragraphs except for the constructs :func:`_cut_inside_construct` looks for,
    so a head cut after a blank line and outside those cleans to the head of the cleaned whole
    (tests/unit/test_readme.py checks that the result is the same)."""
    limit = min(len(text), max(budget * _RAW_CHARS_PER_TOKEN, 65_536))
    size = max(budget * _FIRST_SLICE_CHARS_PER_TOKEN, 256)
    while size * 2 <= limit:  # a slice of more than half the text saves less than a retry costs
        end = _paragraph_end(text, size)
        if end:
            piece = text[:end]
            cleaned = clean_readme(piece)
            head = truncate_head(cleaned, budget)
            # The head must stop a line short of the piece's end: past it, more text could change it.
            if len(head) <= cleaned.rfind("\n") and not _cut_inside_construct(piece):
                return head
        size *= 4
    return truncate_head(clean_readme(text[:limit]), budget)
