"""The structural CLI cue on synthetic READMEs: no services, no models."""

from __future__ import annotations

from tagger.scoring import Profile, Scorer, structure_signals
from tagger.structure import cli_cue, code_of, program_names, runs_own_program
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
