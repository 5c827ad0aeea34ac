"""The structural CLI cue on synthetic READMEs: no services, no models."""

from __future__ import annotations

from tagger.scoring import Profile, Scorer, structure_signals
from tagger.structure import (
    CUE_FUNCTIONS,
    FORM_CUES,
    cli_cue,
    code_of,
    framework_cue,
    learning_cue,
    lib_cue,
    program_names,
    runs_own_program,
    web_app_cue,
)
from tagger.taxonomy import Taxonomy

TAXONOMY = Taxonomy.load()

CLI_README = """# fancy-cli

Renames files in bulk.

## Install

```sh
brew install fancy
```

## Usage

```console
$ fancy --dry-run --pattern '*.txt' ./photos
$ fancy --help
Usage: fancy [OPTIONS] PATH
  --dry-run       show what would change
  --pattern GLOB  which files
```
"""

LIBRARY_README = """# fancylib

Parses dates.

```python
from fancylib import parse

parse("tomorrow")
```
"""

PROSE_README = "# notes\n\nMy notes on distributed systems; each script takes --help."


def test_code_is_fenced_blocks_and_shell_prompt_lines() -> None:
    code = code_of("# t\n\ntext\n\n```\nmake all\n```\n\n$ fancy go\n")
    assert code.split("\n") == ["make all", "", "fancy go"]


def test_a_repos_program_drops_its_cli_affix() -> None:
    assert program_names("someone/Fancy-CLI") == {"fancy-cli", "fancy"}
    assert runs_own_program("$ fancy --x\nsudo fancy build\nfancyish\n", "someone/fancy-cli") == 2


def test_a_readme_that_shows_a_program_run_scores_high() -> None:
    shown = cli_cue(CLI_README, "someone/fancy-cli")
    assert shown > 0.9
    assert cli_cue(LIBRARY_README, "someone/fancylib") < 0.2 < shown
    # A flag named in prose, outside code, is one kind of evidence, not all four.
    assert 0 < cli_cue(PROSE_README, "someone/notes") < shown


def test_the_cue_is_read_in_the_head_only() -> None:
    padded = "# x\n\n" + "Words about it.\n\n" * 2000 + CLI_README
    assert cli_cue(padded, "someone/fancy-cli") == 0


def test_the_cue_is_a_signal_of_the_cli_tag_only() -> None:
    names = TAXONOMY.names
    found = structure_signals(CLI_README, "someone/fancy-cli", names)["cli_usage"]
    assert found[names.index("cli")] > 0.9
    assert sum(found) == found[names.index("cli")]


def test_the_scorer_reads_the_raw_readme_when_given() -> None:
    profile = Profile("cue", {"kw_lead": 4.0, "cli_usage": 3.0}, -3.0, 0.3)
    scorer = Scorer(TAXONOMY.names, profile)
    head = "# fancy-cli\n\nRenames files in bulk."  # what cleaning leaves of the lead: no cue in it
    with_raw, without = scorer.signals([head, head], ["someone/fancy-cli"] * 2, [CLI_README, ""])
    assert with_raw.values["cli_usage"][TAXONOMY.names.index("cli")] > 0.9
    assert scorer.choose(with_raw)[0][0] == "cli"
    assert "cli" not in dict(scorer.choose(without))


# --- the other form-defined tags -----------------------------------------------------------------------

WEB_APP_README = """# pinboard

A self-hosted bookmark manager with a web interface.

![screenshot](docs/shot.png)

```sh
docker run -p 8080:80 someone/pinboard
```

Then open your browser at localhost:8080 and log in.
"""

LEARNING_README = """# learn-go

Free tutorials, courses and books to learn Go.

- [A Tour of Go](https://go.dev/tour) - interactive lessons
- [Go by Example](https://gobyexample.com) - examples
- [The Go Book](https://example.com/book) - a book
- [Exercises](https://example.com/ex) - exercises
"""

FRAMEWORK_README = """# webby

A web framework with routing, middleware and plugins.

```js
app.get("/", handler)
app.use(logger())
```
"""


def test_each_form_cue_reads_its_own_kind_of_readme() -> None:
    readmes = {"lib": (LIBRARY_README, "someone/fancylib"), "web-app": (WEB_APP_README, "someone/pinboard"),
               "learning-resource": (LEARNING_README, "someone/learn-go"),
               "framework": (FRAMEWORK_README, "someone/webby")}
    for tag, (readme, name) in readmes.items():
        own = CUE_FUNCTIONS[tag](readme, name)
        others = [CUE_FUNCTIONS[tag](r, n) for t, (r, n) in readmes.items() if t != tag]
        assert own > max(others) and own > 0.25, tag
    assert lib_cue(CLI_README, "someone/fancy-cli") < 0.1  # run as a program, not imported
    assert all(fn(PROSE_README) < 0.3 for fn in CUE_FUNCTIONS.values())
    assert learning_cue("") == 0.0


def test_form_cues_land_on_their_own_tag_only() -> None:
    values = structure_signals(WEB_APP_README, "someone/pinboard", TAXONOMY.names)
    assert set(values) == {"cli_usage", *FORM_CUES.values()}
    for tag, signal in FORM_CUES.items():
        index = TAXONOMY.names.index(tag)
        assert all(v == 0.0 for i, v in enumerate(values[signal]) if i != index)
    assert values["web_app_cue"][TAXONOMY.names.index("web-app")] == web_app_cue(WEB_APP_README)
    assert framework_cue(FRAMEWORK_README) > 0.5
