"""Inputs and outages that used to pass silently: ids holding line separators or bidirectional
controls, a run recorded for work never sent (Redis down), a README of any size."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import sqlalchemy as sa

from bench import free_port
from db.engine import transaction
from db.models import repos, runs
from producer.importer import import_repos
from tests.support.data import READMES, write_jsonl
from tests.support.processes import run_cli, status

GOOD = (READMES / "1001.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("char", ["\x85", "\u2028", "\u2029", "\u202e", "\u2066", "\x9f", "\x1b"],
                         ids=["NEL", "LS", "PS", "RLO", "LRI", "APC", "ESC"])
def test_ids_with_separators_or_bidi_controls_are_refused_one_line_each(settings, env, tmp_path, char):
    source = write_jsonl(tmp_path / "repos.jsonl", [
        {"id": "good", "readme": GOOD}, {"id": f"a{char}b", "readme": GOOD}, {"id": f"end{char}", "readme": GOOD}])
    result = run_cli(env, "import", str(source), check=False)
    assert result.returncode == 1
    assert "imported 1 repos; rejected 2 lines" in result.stdout
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 2  # one line each, the character escaped
    assert errors[0] == f"error: line 2: repo id {'a' + char + 'b'!r} contains control characters or invalid UTF-8"
    assert errors[1].startswith("error: line 3: repo id ")
    assert char not in result.stderr
    assert status(env)["repos"] == 1


def test_enqueue_and_canary_with_redis_down_record_no_run(settings, env, tmp_path):
    run_cli(env, "import", str(write_jsonl(tmp_path / "repos.jsonl", [{"id": f"r{i}", "readme": GOOD}
                                                                      for i in range(5)])))
    down = {**env, "TAGGER_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
    for args in (("enqueue", "--all"), ("enqueue", "--ids", "r1,r2"), ("canary", "--sample", "5")):
        result = run_cli(down, *args, check=False)
        assert result.returncode == 1 and "BrokerUnavailable" in result.stderr, result.stderr
        assert "sent" not in result.stdout
    with transaction(settings.database_url) as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(runs)).scalar_one() == 0
    assert run_cli(env, "runs").stdout.strip().count("\n") == 0  # the header only
    assert status(env)["pending"] == 0


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("TAGGER_BROKER_URL", "redis://127.0.0.1:6379/abc", "the database 'abc' is not a number"),
    ("TAGGER_DATABASE_URL", "mysql://root@127.0.0.1/tagger", "unsupported database 'mysql'"),
    ("TAGGER_DATABASE_URL", "mysql+pymysql://root@127.0.0.1/tagger", "unsupported database 'mysql+pymysql'"),
])
def test_unusable_urls_are_settings_errors(env, variable, value, message):
    result = run_cli({**env, variable: value}, "status", check=False, in_process=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: invalid setting: {variable}: ") and message in lines[0]


def test_a_readme_over_the_limit_is_stored_cut_with_its_size(settings, env, tmp_path):
    head = "# grepline\n\nA fast command-line tool (cli) to search logs. é😀\n\n"
    huge = head + ("lorem \"ipsum\" dolor\\ " * 200_000)
    size = len(huge.encode())
    source = write_jsonl(tmp_path / "repos.jsonl", [{"id": "huge", "readme": huge}, {"id": "small", "readme": GOOD}])
    result = run_cli({**env, "TAGGER_README_MAX_BYTES": "65536"}, "import", str(source))
    assert "imported 2 repos; rejected 0 lines" in result.stdout
    assert ("note: 1 READMEs were longer than 65536 bytes (TAGGER_README_MAX_BYTES): their head was stored, and "
            "their original size") in result.stderr
    with transaction(settings.database_url) as conn:
        stored = {r.id: r for r in conn.execute(sa.select(repos.c.id, repos.c.readme, repos.c.readme_size))}
    assert stored["small"].readme == GOOD and stored["small"].readme_size is None
    assert stored["huge"].readme.startswith(head) and len(stored["huge"].readme.encode()) <= 65536
    assert huge.startswith(stored["huge"].readme)
    assert stored["huge"].readme_size == size


@pytest.mark.parametrize("ensure_ascii", [True, False], ids=["escaped", "raw"])
def test_a_line_far_over_the_limit_is_read_in_pieces(settings, tmp_path, ensure_ascii):
    head = "# tool é😀 \"quoted\"\n"
    huge = head + ("x\\y\u00e9" * 1_000_000)
    line = json.dumps({"id": "big", "name": "o/big", "readme": huge, "extra": [1, {"a": "b"}]},
                      ensure_ascii=ensure_ascii)
    (tmp_path / "repos.jsonl").write_text(line + "\n" + json.dumps({"id": "next", "readme": GOOD}) + "\n",
                                          encoding="utf-8")
    report = import_repos(settings.database_url, tmp_path / "repos.jsonl", readme_max_bytes=4096)
    assert (report.imported, report.truncated, report.errors) == (2, 1, [])
    with transaction(settings.database_url) as conn:
        stored = dict(conn.execute(sa.select(repos.c.id, repos.c.readme)).all())
    assert huge.startswith(stored["big"]) and len(stored["big"]) > 1000
    assert stored["next"] == GOOD


MEASURE = """
import json, resource, sys  # ru_maxrss: KiB on Linux
from producer.importer import import_repos
report = import_repos(sys.argv[1], sys.argv[2], readme_max_bytes=int(sys.argv[3]))
print(json.dumps({"peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "truncated": report.truncated}))
"""


@pytest.mark.slow
def test_importing_a_200_mb_line_stays_within_bounded_memory(settings, tmp_path):
    """Peak RSS of an import of one 200 MB README line: bounded by the limit, not by the line."""
    path = tmp_path / "huge.jsonl"
    with open(path, "w", encoding="utf-8") as out:
        out.write('{"id": "huge", "name": "o/huge", "readme": "# huge\\n')
        chunk = "lorem ipsum dolor sit amet \\\"quoted\\\" " * 1000
        for _ in range(200 * 1024 * 1024 // len(chunk)):
            out.write(chunk)
        out.write('"}\n')
    baseline = json.loads(subprocess.run([sys.executable, "-c", MEASURE, settings.database_url, "/dev/null", "1048576"],
                                         capture_output=True, text=True, check=True).stdout)["peak_kib"]
    measured = json.loads(subprocess.run([sys.executable, "-c", MEASURE, settings.database_url, str(path), "1048576"],
                                         capture_output=True, text=True, check=True).stdout)
    assert measured["truncated"] == 1
    grown_mib = (measured["peak_kib"] - baseline) / 1024
    print(f"import of a {path.stat().st_size / 2**20:.0f} MiB line: peak RSS {measured['peak_kib'] / 1024:.0f} MiB "
          f"({grown_mib:.0f} MiB above an empty import)")
    assert grown_mib < 64, grown_mib
