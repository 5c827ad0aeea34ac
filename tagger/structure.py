"""What a README's *form* says about the kind of project, when its words do not.

READMEs rarely say "this is a command-line tool": they show it. A CLI's README installs it as a
program (``brew install``, ``cargo install``, ``npm install -g``...), runs its own name from a shell,
shows ``--help`` or a ``usage:`` line, and passes long flags. These cues are read from the raw Markdown
(its code blocks are still whole there), in its head only, and give one number in 0..1 per
form-defined tag, a signal of that tag alone (tagger/scoring.py):

- ``cli_usage`` (``cli``): a program installed and run, above;
- ``lib_cue`` (``lib``): installed as a dependency (``pip install x``, ``npm install x``, ``cargo add``,
  ``go get``, a manifest's dependency block) and imported in its examples, unless it is run as a CLI;
- ``framework_cue`` (``framework``): the vocabulary of frameworks in the head (middleware, plugins,
  routing, hooks, scaffolding, ``app.get(...)``, ``create-x-app``...);
- ``web_app_cue`` (``web-app``): run as a service to open in a browser (``docker run -p``,
  ``docker compose up``, ``localhost:8080``, self-hosting, a demo, screenshots);
- ``learning_cue`` (``learning-resource``): a list of links with little code, in the words of
  tutorials, courses, books and guides.

Nothing here is learned; the scoring weighs each cue with a fitted weight (``tagger calibrate``),
inside cross-validation like every other signal. The cues were written from general knowledge of how
such READMEs are laid out, before measuring, and kept because leave-one-source-out CV improved with
them (docs/quality.md); a cue for ``sdk`` changed nothing and was left out.
"""

from __future__ import annotations

import math
import re

CUE_TAG = "cli"
# The form-defined tags other than cli, each with its cue's signal name.
FORM_CUES: dict[str, str] = {
    "lib": "lib_cue", "framework": "framework_cue", "web-app": "web_app_cue", "learning-resource": "learning_cue",
}
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


# --- the other form-defined tags -----------------------------------------------------------------------

_DEPENDENCY_INSTALL = re.compile(
    r"\b(?:pip\s+install\s+(?!-r\b|-e\b|\.)[\w\[\]-]+|npm\s+(?:install|i)\s+(?:--save\s+)?(?!-g\b|--global\b)[@\w/.-]+"
    r"|yarn\s+add\s+(?!global)|pnpm\s+add|cargo\s+add|go\s+get\s|dotnet\s+add\s+package|Install-Package"
    r"|composer\s+require|gem\s+install|poetry\s+add|uv\s+add|conda\s+install|bun\s+add)",
    re.I,
)
_MANIFEST_DEPENDENCY = re.compile(
    r"<dependency>|implementation\s*[\(']|^\s*\[dependencies\]|\"dependencies\"\s*:|PackageReference|require\s+\(",
    re.I | re.M,
)
_IMPORT = re.compile(
    r"^\s*(?:import\s+[\w.{]|from\s+[\w.]+\s+import\b|(?:const|let|var)\s+[\w{}\s,]+=\s*require\(|use\s+\w+(?:::|;)"
    r"|#include\s*[<\"]|using\s+[\w.]+;|require\s+['\"])",
    re.M,
)
_FRAMEWORK_WORDS = re.compile(
    r"\b(?:middleware|plugins?|routing|routes?|router|scaffold\w*|boilerplate|hooks?|lifecycle|extensions?|convention"
    r"|app\.(?:get|use|listen|route)|@app\.|create-[\w-]+-app|new\s+project)\b",
    re.I,
)
_WEB_APP_WORDS = re.compile(
    r"\b(?:docker\s+run|docker[- ]compose\s+up|localhost:\d+|127\.0\.0\.1:\d+|-p\s+\d+:\d+|self-host\w*|demo"
    r"|screenshots?|live\s+(?:demo|site)|open\s+your\s+browser|web\s+interface|dashboard|sign\s*up|log\s*in)\b",
    re.I,
)
_IMAGE = re.compile(r"!\[[^\]]*\]\([^)]+\)|<img\s", re.I)
_LINK_ITEM = re.compile(r"^\s*(?:[-*+]|\d+\.)\s+.*\[[^\]]+\]\([^)]+\)", re.M)
_LEARNING_WORDS = re.compile(
    r"\b(?:tutorials?|courses?|lessons?|chapters?|exercises?|learn\w*|book|guide|interview|roadmap|cheat\s*sheet"
    r"|examples?)\b",
    re.I,
)


def _distinct(pattern: re.Pattern[str], text: str) -> int:
    return len({m.lower() for m in pattern.findall(text)})


def lib_cue(readme: str, repo_name: str = "") -> float:
    """0..1: installed as a dependency, declared in a manifest, imported in the examples; a README
    that shows a program run (``cli_cue``) weighs less: "imported, not run"."""
    head = readme[:CUE_HEAD_CHARS]
    code = code_of(head)
    points = (bool(_DEPENDENCY_INSTALL.search(code)) + bool(_MANIFEST_DEPENDENCY.search(code))
              + min(len(_IMPORT.findall(code)), 3) / 3)
    return _squash(points) * (1 - cli_cue(readme, repo_name))


def framework_cue(readme: str, repo_name: str = "") -> float:
    """0..1: distinct words of a framework's vocabulary in the head (three say most)."""
    return _squash(_distinct(_FRAMEWORK_WORDS, readme[:CUE_HEAD_CHARS]) / 3)


def web_app_cue(readme: str, repo_name: str = "") -> float:
    """0..1: distinct marks of a service opened in a browser, and screenshots."""
    head = readme[:CUE_HEAD_CHARS]
    return _squash(_distinct(_WEB_APP_WORDS, head) / 3 + min(len(_IMAGE.findall(head)), 4) / 8)


def learning_cue(readme: str, repo_name: str = "") -> float:
    """0..1: the share of lines that are linked list items (doubled, capped at 1), halved when the head
    is more than a tenth code, times the vocabulary of learning material."""
    head = readme[:CUE_HEAD_CHARS]
    lines = [line for line in head.split("\n") if line.strip()]
    if not lines:
        return 0.0
    share = len(_LINK_ITEM.findall(head)) / len(lines)
    little_code = 1.0 if len(code_of(head)) < 0.1 * len(head) else 0.5
    return min(1.0, share * 2) * little_code * _squash(_distinct(_LEARNING_WORDS, head) / 3 + 0.3)


CUE_FUNCTIONS = {"lib": lib_cue, "framework": framework_cue, "web-app": web_app_cue, "learning-resource": learning_cue}


def form_cues(readme: str, repo_name: str = "") -> dict[str, float]:
    """Every form cue of a raw README, by signal name (``cli_usage`` included)."""
    cues = {FORM_CUES[tag]: fn(readme, repo_name) for tag, fn in CUE_FUNCTIONS.items()}
    cues["cli_usage"] = cli_cue(readme, repo_name)
    return cues
