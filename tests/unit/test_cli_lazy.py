"""`tagger` loads a command's modules only when it runs: `tagger --help` lists every command from the
registry (cli.base.COMMANDS) without importing any of them, nor the heavy libraries they use, nor what
every command runs first (cli.settings: pydantic for the settings, structlog for the logs)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

from cli.base import COMMANDS, cli

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("sqlalchemy", "psycopg", "celery", "kombu", "redis", "torch", "vllm", "llama_cpp", "prometheus_client",
         "pydantic", "pydantic_core", "structlog", "rich")


def _in_fresh_interpreter(code: str) -> dict[str, object]:
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def test_help_lists_every_command_with_its_help_and_imports_none_of_them():
    seen = _in_fresh_interpreter(
        "import json, sys\n"
        "from click.testing import CliRunner\n"
        "import cli\n"
        "imported = sorted(sys.modules)\n"
        "out = CliRunner().invoke(cli.cli, ['--help'], terminal_width=200).output\n"
        "after_help = sorted(sys.modules)\n"
        "version = CliRunner().invoke(cli.cli, ['--version']).output\n"
        "print(json.dumps({'imported': imported, 'after_help': after_help, 'after_version': sorted(sys.modules),\n"
        "                  'out': out, 'version': version}))\n"
    )
    out = str(seen["out"])
    for name, entry in COMMANDS.items():
        assert any(line.split()[:1] == [name] and entry.summary[:30] in line for line in out.splitlines()), name
    assert "TAGGER_DATABASE_URL" in out and "TAGGER_LOG_LEVEL" in out  # the settings, with pydantic not loaded
    assert "version" in str(seen["version"])
    for when in ("imported", "after_help", "after_version"):
        modules = {str(m).split(".")[0] for m in seen[when]}  # type: ignore[attr-defined]
        assert modules.isdisjoint(HEAVY), f"{when}: {sorted(modules & set(HEAVY))}"
        commands = [m for m in seen[when] if str(m).startswith("cli.") and str(m) != "cli.base"]  # type: ignore[attr-defined]
        assert commands == [], when


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_registered_command_is_the_one_its_module_defines_with_the_same_help(name):
    entry = COMMANDS[name]
    command = entry.load()
    assert command.name == name
    assert entry.summary == command.get_short_help_str(limit=1000)


def test_every_command_in_the_cli_modules_is_registered():
    """A command a module defines but the registry forgets would never be reachable."""
    defined: set[str] = set()
    nested: set[int] = set()
    for path in sorted((ROOT / "cli").glob("*.py")):
        module = importlib.import_module(f"cli.{path.stem}")
        commands = [v for v in vars(module).values() if isinstance(v, click.Command)]
        for command in commands:
            if isinstance(command, click.Group):
                nested.update(id(sub) for sub in command.commands.values())
        defined.update(f"{path.stem}:{k}" for k, v in vars(module).items()
                       if isinstance(v, click.Command) and v is not cli)
        defined -= {f"{path.stem}:{k}" for k, v in vars(module).items() if id(v) in nested}
    registered = {entry.target.removeprefix("cli.") for entry in COMMANDS.values()}
    assert defined - registered == set()


def test_a_command_loads_on_first_use_and_unknown_names_stay_unknown():
    ctx = click.Context(cli)
    assert isinstance(cli.get_command(ctx, "status"), click.Command)
    assert cli.get_command(ctx, "no-such-command") is None


# `tagger status` is what an operator runs most: its path loads SQLAlchemy's core, psycopg and redis-py,
# its progress view (producer.progress), and nothing of the ORM, the queue's Celery/Kombu, the sending
# producer, the worker's batch path or a model.
NOT_FOR_STATUS = ("sqlalchemy.orm", "celery", "kombu", "producer.enqueue", "producer.runs", "workers.batch",
                  "workers.tasks", "db.work", "tagger.engine", "alembic", "numpy", "torch", "vllm", "llama_cpp",
                  "prometheus_client")


# `tagger export` reads results and writes them out: no queue, no producer, no migrations, no model.
NOT_FOR_EXPORT = ("celery", "kombu", "redis", "producer", "workers", "alembic", "tagger.engine", "numpy", "torch",
                  "vllm", "llama_cpp", "prometheus_client")


# Runs, diff, promote, rollback and history read and write the database only: no queue, no model (diff's
# gold scoring uses tagger.evaluation's pure parts).
NOT_FOR_RUNS = ("celery", "kombu", "redis", "producer.enqueue", "producer.canary", "workers", "alembic",
                "numpy", "torch", "vllm", "llama_cpp", "prometheus_client")


@pytest.mark.parametrize(("command", "option", "not_needed"), [
    ("status", "--run", NOT_FOR_STATUS),
    ("export", "--changed-since", NOT_FOR_EXPORT),
    ("rollback", "RUN", NOT_FOR_RUNS),
    ("diff", "--gold", NOT_FOR_RUNS),
    ("runs", "--limit", NOT_FOR_RUNS),
])
def test_a_command_loads_none_of_the_modules_it_does_not_need(command, option, not_needed):
    seen = _in_fresh_interpreter(
        "import json, sys\n"
        "from click.testing import CliRunner\n"
        "import cli\n"
        f"out = CliRunner().invoke(cli.cli, [{command!r}, '--help'], terminal_width=200).output\n"
        "print(json.dumps({'imported': sorted(sys.modules), 'out': out}))\n"
    )
    assert option in str(seen["out"])
    imported = set(seen["imported"])  # type: ignore[call-overload]
    assert COMMANDS[command].target.partition(":")[0] in imported
    loaded = sorted(m for m in imported if any(m == n or m.startswith(n + ".") for n in not_needed))
    assert loaded == []
