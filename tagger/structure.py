"""What a README's *structure* says about the kind of project, when its words do not.

READMEs rarely say "this is a command-line tool": they show it. A CLI's README installs it as a
program (``brew install``, ``cargo install``, ``npm install -g``...), runs its own name from a shell,
shows ``--help`` or a ``usage:`` line, and passes long flags. These cues are read from the raw Markdown
(its code blocks are still whole there), in its head only, and give one number in 0..1, the
``cli_usage`` signal of the ``cli`` tag (tagger/scoring.py). Nothing here is learned; the scoring
weighs the cue with a fitted weight (``tagger calibrate``), inside cross-validation like every other
signal. (Cues for ``lib`` and ``framework`` were tried and lowered the cross-validated F1: see
docs/quality.md.)
"""

from __future__ import annotations

import math
import re

CUE_TAG = "cli"
# Cues are read in the README's first characters: install and usage sections come early, while the
# tail (API references, changelogs) would let any long README show every cue.
CUE_HEAD_CHARS = 12_000

_FENCE = re.compile(r"^[ \t]*(```|~~~)[^\n]*\n(.*?)^[ \t]*\1", re.S | re.M)
_SHELL_PROMPT = re.compile(r"^[ \t]*[$>%][ \t]+(\S.*)$", re.M)
# Installing a program for the shell, not a dependency of one's own project.
_TOOL_INSTALL = re.compile(
    r"\b(?:brew\s+install|cargo\s+install|go\s+install|pipx\s+install|npm\s+(?:install|i)\s+(?:-g|--global)\b"
    r"|yarn\s+global\s+add|apt(?:-get)?\s+install|scoop\s+install|winget\s+install|choco\s+install"
    r"|snap\s+install|pacman\s+-S|nix-env\s+-i|uv\s+tool\s+install)",
    re.I,
)
_HELP = re.compile(r"(?:^|\s)(?:--help|-h,\s+--help)\b|^\s*usage:\s", re.I | re.M)
_LONG_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]+", re.I)
# Affixes a repository's name carries that its program's name usually drops (``fancy-cli`` → ``fancy``).
_AFFIXES = ("-cli", "_cli", ".cli", "-rs", "-go", ".js", "-js", ".py", "-py")


def _squash(count: float) -> float:
    return 1.0 - math.exp(-count)


def code_of(readme: str) -> str:
    """Every fenced block's content and every shell-prompt line: what a README shows rather than says."""
    blocks = [m.group(2) for m in _FENCE.finditer(readme)]
    blocks += [m.group(1) for m in _SHELL_PROMPT.finditer(readme)]
    return "\n".join(blocks)


def program_names(repo_name: str) -> set[str]:
    """The names a repository's own program likely has: ``owner/Fancy-CLI`` → {``fancy-cli``, ``fancy``}."""
    repo = repo_name.rsplit("/", 1)[-1].lower()
    names = {repo}
    for affix in _AFFIXES:
        if repo.endswith(affix):
            names.add(repo.removesuffix(affix))
    return {n for n in names if len(n) >= 2}


def runs_own_program(code: str, repo_name: str) -> int:
    """Lines of code that start by running the repository's own program (``$ fancy --x``, ``fancy build``)."""
    names = program_names(repo_name) if repo_name else set()
    if not names:
        return 0
    alternation = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    pattern = re.compile(rf"^[ \t]*(?:[$>%][ \t]+)?(?:sudo\s+|npx\s+|\./)?(?:{alternation})(?:[ \t]|$)", re.I | re.M)
    return len(pattern.findall(code))


def cli_cue(readme: str, repo_name: str = "") -> float:
    """Raw README (Markdown) → 0..1: how much it shows a command-line program being installed and run.

    Four kinds of evidence, each worth up to one point, squashed (``1 - exp(-points)``): installed as a
    program; its own name run from a shell (up to 3 lines); ``--help`` or ``usage:``; long flags in
    its code (up to 6 distinct)."""
    head = readme[:CUE_HEAD_CHARS]
    code = code_of(head)
    points = (
        bool(_TOOL_INSTALL.search(code))
        + min(runs_own_program(code, repo_name), 3) / 3
        + bool(_HELP.search(head))
        + min(len(set(_LONG_FLAG.findall(code))), 6) / 6
    )
    return _squash(points)
