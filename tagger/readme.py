"""README cleaning and truncation: what the model reads of a repository."""

from __future__ import annotations

import hashlib
import html
import re

# Code blocks longer than this many lines keep their head only: install snippets are informative,
# long listings are not, and they cost tokens.
CODE_BLOCK_KEEP_LINES = 6

_FENCE = re.compile(r"^(```|~~~)[^\n]*\n(.*?)(?:^\1[^\n]*$|\Z)", re.S | re.M)
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.S)
_HTML_BLOCK_DROP = re.compile(r"<(script|style|svg)\b.*?</\1\s*>", re.S | re.I)
_HTML_IMG = re.compile(r"<img\b[^>]*>", re.I)
_HTML_TAG = re.compile(r"</?[a-zA-Z][^>]*>")
_MD_BADGE = re.compile(r"\[!\[[^\]]*\]\([^)]*\)\]\([^)]*\)")
_MD_IMAGE = re.compile(r"!\[[^\]]*\]\([^)]*\)")
_MD_REF_IMAGE = re.compile(r"!\[[^\]]*\]\[[^\]]*\]")
_MD_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_MD_REF_DEF = re.compile(r"^\s*\[[^\]]+\]:\s*\S+.*$", re.M)
_BARE_URL = re.compile(r"https?://\S+")
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{3,}.*$", re.M)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACES = re.compile(r"[ \t\u00a0]+")
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
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _FENCE.sub(_shorten_code, text)
    text = _HTML_COMMENT.sub("", text)
    text = _HTML_BLOCK_DROP.sub("", text)
    text = _MD_BADGE.sub("", text)
    text = _HTML_IMG.sub("", text)
    text = _MD_IMAGE.sub("", text)
    text = _MD_REF_IMAGE.sub("", text)
    text = _MD_LINK.sub(r"\1", text)
    text = _MD_REF_DEF.sub("", text)
    text = _HTML_TAG.sub(" ", text)
    text = html.unescape(text)
    text = _BARE_URL.sub("", text)
    text = _TABLE_RULE.sub("", text)
    text = _SPACES.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    text = _BLANK_LINES.sub("\n\n", text)
    return text.strip()


def estimate_tokens(text: str) -> int:
    """A fast, tokenizer-free estimate: one token per CJK character, ~1.3 per word or symbol."""
    cjk = len(_CJK.findall(text))
    return cjk + (len(_WORDISH.findall(_CJK.sub(" ", text))) * 4 + 2) // 3


def truncate_head(text: str, budget: int) -> str:
    """Keep the head of ``text`` within ``budget`` estimated tokens, cut at a line or word boundary."""
    text = text[: budget * 16]  # a cheap bound: past 16 characters per token is noise (hashes, minified code)
    if estimate_tokens(text) <= budget:
        return text
    low, high = 0, len(text)
    while low < high:  # longest prefix within budget
        mid = (low + high + 1) // 2
        if estimate_tokens(text[:mid]) <= budget:
            low = mid
        else:
            high = mid - 1
    head = text[:low]
    cut = max(head.rfind("\n"), head.rfind(" "))
    if cut > low * 0.8:
        head = head[:cut]
    return head.rstrip()


# Only the head is ever kept, so cleaning a 10 MB README need not read all of it: cleaning rarely
# removes more than this factor of characters per kept token (badges, HTML and link targets).
_RAW_CHARS_PER_TOKEN = 64


def prepare_readme(text: str, budget: int) -> str:
    """What the model reads: the cleaned head of the README, within ``budget`` tokens."""
    return truncate_head(clean_readme(text[: max(budget * _RAW_CHARS_PER_TOKEN, 65_536)]), budget)
