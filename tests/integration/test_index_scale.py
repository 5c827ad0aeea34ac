"""The whole-index operations (issue 18) on a real PostgreSQL: set-based rollback and promote with pins
and later changes respected, the trigger-kept counts exact through every write path, the streamed
import's duplicate report, the incremental export, and history pruning. Their speed is measured by
`tagger bench --only index`, not here."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from bench.bulk import IndexShape, load_index
from bench.index import _FLOOR_TABLE, import_floor_rows_per_s, make_retag_run, write_floor_copy, write_import_file
from db.canary import _PROMOTE_NEW, _PROMOTE_REPLACE, insert_shadow_queued, promote_shadow_results, write_shadow_results
from db.configuration import Configuration
from db.counts import CANARY_COUNTERS, RUN_COUNTERS, run_counters
from db.dead_letters import DeadLetter, delete_dead_letters, purge_dead_letters, record_dead_letters
from db.engine import bulk_write_settings, transaction
from db.history import _LEFT_ALONE, _ROLLBACK_WRITES, prune_history, rollback_run
from db.jobs import mark_done, mark_queued, schedule_retries, status_counts
from db.pins import pin_tags, unpin_tags
from db.progress import canaries_pending, runs_progress
from db.repos import REPOS_COPY_COLUMNS
from db.results import upsert_results
from db.runs import create_run
from producer import importer
from tagger.errors import InputError
from tagger.readme import readme_hash
from tests.support.processes import run_cli

N = 300  # repos: enough for every statement to work on sets, few enough for a quick test
CONFIG = Configuration("keyword", "k-1", "p1", 1)


def ids(n: int = N, start: int = 0) -> list[str]:
    return [f"r{i:05d}" for i in range(start, start + n)]


def add_repos(url: str, n: int = N) -> None:
    with transaction(url) as conn:
        conn.execute(sa.text("INSERT INTO repos (id, name, readme, readme_hash) "
                             "SELECT 'r' || lpad(i::text, 5, '0'), '', 'x', 'h' FROM generate_series(0, :n - 1) i"),
                     {"n": n})


def row(repo_id: str, tags: list[int], run_id: int | None, readme_version: int = 1) -> dict[str, object]:
    return {"repo_id": repo_id, "tag_ids": tags, "backend": "keyword", "model": "k-1", "prompt_version": "p1",
            "taxonomy_version": 1, "readme_hash": "h", "readme_version": readme_version, "raw_output": "",
            "latency_ms": 1.0, "run_id": run_id}


def new_run(url: str, kind: str = "live") -> int:
    with transaction(url) as conn:
        return create_run(conn, kind=kind, started_by="test", label=None, selection="all", configuration=CONFIG)


def live_tags(url: str) -> dict[str, tuple[list[int], int | None]]:
    with transaction(url) as conn:
        rows = conn.execute(sa.text("SELECT repo_id, tag_ids, run_id FROM results"))
        return {repo_id: (list(tags), run) for repo_id, tags, run in rows}


def exact_counts(url: str) -> dict[str, int]:
    """What status_counts must say, counted the slow way."""
    with transaction(url) as conn:
        def count(sql: str) -> int:
            return int(conn.execute(sa.text(sql)).scalar_one())
        return {"repos": count("SELECT count(*) FROM repos"), "tagged": count("SELECT count(*) FROM results"),
                "dead": count("SELECT count(*) FROM dead_letters"),
                "pending": count("SELECT count(*) FROM jobs WHERE state = 'queued'"),
                "failed": count("SELECT count(*) FROM jobs WHERE state = 'failed'"),
                "done": count("SELECT count(*) FROM jobs WHERE state = 'done'")}


def assert_counts_exact(url: str) -> None:
    with transaction(url) as conn:
        kept = status_counts(conn)
    assert kept == exact_counts(url)


def test_rollback_of_many_repos_respects_pins_and_later_changes(database_url):
    add_repos(database_url, N + 10)
    first, second, later = new_run(database_url), new_run(database_url), new_run(database_url)
    with transaction(database_url) as conn:
        upsert_results(conn, [row(i, [1], first) for i in ids()])
        upsert_results(conn, [row(i, [2], second) for i in ids(N + 10)])  # the last 10: tagged first by it
    with transaction(database_url) as conn:
        for repo_id in ids(3):
            pin_tags(conn, repo_id, [5], set_by="ann", note="", taxonomy_version=1)
        upsert_results(conn, [row(i, [3], later) for i in ids(5, start=3)])
    with transaction(database_url) as conn:
        report = rollback_run(conn, second)
    assert (report.restored, report.removed, report.pinned, report.changed_since) == (N - 8, 10, 3, 5)
    assert report.pinned_sample == ids(3) and report.changed_since_sample == ids(5, start=3)
    live = live_tags(database_url)
    assert all(live[i] == ([1], first) for i in ids(N - 8, start=8))
    assert all(live[i][0] == [5] for i in ids(3)) and all(live[i] == ([3], later) for i in ids(5, start=3))
    assert not set(ids(10, start=N)) & set(live)
    assert_counts_exact(database_url)


def test_a_large_rollback_names_a_bounded_sample(database_url):
    add_repos(database_url)
    first, second, later = new_run(database_url), new_run(database_url), new_run(database_url)
    with transaction(database_url) as conn:
        upsert_results(conn, [row(i, [1], first) for i in ids()])
        upsert_results(conn, [row(i, [2], second) for i in ids()])
        upsert_results(conn, [row(i, [3], later) for i in ids(100)])
    with transaction(database_url) as conn:
        report = rollback_run(conn, second)
    assert report.changed_since == 100 and len(report.changed_since_sample) == 20
    assert report.restored == N - 100


def test_promote_of_many_repos_respects_pins_and_newer_readmes(database_url):
    add_repos(database_url)
    live = new_run(database_url)
    with transaction(database_url) as conn:
        upsert_results(conn, [row(i, [1], live) for i in ids(N - 50)])  # the last 50: untagged live
        for repo_id in ids(4):
            pin_tags(conn, repo_id, [5], set_by="ann", note="", taxonomy_version=1)
        upsert_results(conn, [row(i, [1], live, readme_version=2) for i in ids(6, start=4)])  # newer README
    canary = new_run(database_url, "canary")
    with transaction(database_url) as conn:
        insert_shadow_queued(conn, canary, ids())
        write_shadow_results(conn, canary, [row(i, [7], None) | {"state": "done", "error": None} for i in ids()])
        promotion = promote_shadow_results(conn, canary)
    assert (promotion.promoted, promotion.skipped) == (N - 10, 10)
    assert promotion.skipped_sample == ids(10)
    tags = live_tags(database_url)
    assert all(tags[i] == ([7], canary) for i in ids(N - 10, start=10))
    assert all(tags[i][0] == [5] for i in ids(4)) and all(tags[i] == ([1], live) for i in ids(6, start=4))
    with transaction(database_url) as conn:
        again = promote_shadow_results(conn, canary)  # promoting twice writes nothing more
        history = conn.execute(sa.text("SELECT count(*) FROM result_history WHERE replaced_by_run = :r"),
                               {"r": canary}).scalar_one()
    assert again.promoted == 0 and history == N - 60  # those that had a live result were archived
    with transaction(database_url) as conn:
        report = rollback_run(conn, canary)
    assert (report.restored, report.removed) == (N - 60, 50)
    assert_counts_exact(database_url)


def test_shadow_failures_never_undo_a_shadow_result(database_url):
    add_repos(database_url, 4)
    canary = new_run(database_url, "canary")
    with transaction(database_url) as conn:
        insert_shadow_queued(conn, canary, ids(4))
        write_shadow_results(conn, canary, [row("r00000", [7], None) | {"state": "done", "error": None}])
        write_shadow_results(conn, canary, [{"repo_id": i, "state": "failed", "attempts": 1, "error": "boom"}
                                            for i in ids(2)])
        states = dict(conn.execute(sa.text("SELECT repo_id, state FROM shadow_results")).all())
    assert states == {"r00000": "done", "r00001": "failed", "r00002": "queued", "r00003": "queued"}


def test_status_counts_stay_exact_through_every_write_path(database_url):
    add_repos(database_url)
    assert_counts_exact(database_url)
    run = new_run(database_url)
    with transaction(database_url) as conn:
        mark_queued(conn, ids(), run_id=run)
    assert_counts_exact(database_url)
    with transaction(database_url) as conn:
        upsert_results(conn, [row(i, [1], run) for i in ids(200)])
        mark_done(conn, ids(200), "t1")
        schedule_retries(conn, [(i, 1, 0.01, "boom") for i in ids(50, start=200)], "t1")
        record_dead_letters(conn, [DeadLetter(i, "Boom", "boom", 3) for i in ids(20, start=250)], "t1")
        mark_queued(conn, ids(20, start=250), run_id=run)  # a retry of a retry: state moves, count does not
    assert_counts_exact(database_url)
    with transaction(database_url) as conn:
        upsert_results(conn, [row(i, [2], run) for i in ids(10, start=250)])  # dead letters tagged at last
        delete_dead_letters(conn, ids(10, start=250))
        mark_done(conn, ids(10, start=250), "t2")
        pin_tags(conn, "r00290", [5], set_by="ann", note="", taxonomy_version=1)
        unpin_tags(conn, "r00000")
        unpin_tags(conn, "r00290")  # no machine version before: untagged again
        purge_dead_letters(conn, datetime.now(UTC) + timedelta(days=1))
    assert_counts_exact(database_url)
    with transaction(database_url) as conn:
        rollback_run(conn, run)
        conn.execute(sa.text("DELETE FROM repos WHERE id >= 'r00280'"))  # cascades into jobs and results
    assert_counts_exact(database_url)
    with transaction(database_url) as conn:
        conn.execute(sa.text("TRUNCATE jobs"))
    assert_counts_exact(database_url)


def exact_run_counters(url: str, run_ids: list[int]) -> dict[int, dict[str, int]]:
    """What run_counters must say, counted the slow way from the rows: repos each run wrote a result for
    (live, or in history under its id), its live results, its jobs by state."""
    with transaction(url) as conn:
        def by_run(sql: str) -> dict[tuple[object, ...], int]:
            return {tuple(key): int(n) for *key, n in conn.execute(sa.text(sql))}
        tagged = by_run("SELECT run_id, count(DISTINCT repo_id) FROM (SELECT run_id, repo_id FROM results "
                        "UNION ALL SELECT run_id, repo_id FROM result_history) AS w GROUP BY run_id")
        live = by_run("SELECT run_id, count(*) FROM results GROUP BY run_id")
        states = by_run("SELECT run_id, state, count(*) FROM jobs GROUP BY run_id, state")
    counted = {run: {"tagged": tagged.get((run,), 0), "results": live.get((run,), 0)} for run in run_ids}
    for run in run_ids:
        counted[run] |= {f"jobs:{s}": states.get((run, s), 0) for s in ("queued", "done", "failed", "dead")}
    return counted


def assert_run_counters_exact(url: str, run_ids: list[int]) -> dict[int, dict[str, int]]:
    with transaction(url) as conn:
        kept = run_counters(conn, run_ids)
    assert kept == exact_run_counters(url, run_ids)
    assert all(set(counters) == set(RUN_COUNTERS) for counters in kept.values())
    return kept


def test_run_counters_stay_exact_through_every_write_path(database_url):
    """Each step in a transaction of its own, as the workers, rollback and promote write (a run's
    result counts for it when written now; a restored one keeps its older time)."""
    add_repos(database_url)
    first, second = new_run(database_url), new_run(database_url)
    runs = [first, second]
    with transaction(database_url) as conn:
        mark_queued(conn, ids(), run_id=first)
    assert assert_run_counters_exact(database_url, runs)[first]["jobs:queued"] == N
    with transaction(database_url) as conn:  # a first tagging, and the job states that follow
        upsert_results(conn, [row(i, [1], first) for i in ids(200)])
        mark_done(conn, ids(200), "t1")
        schedule_retries(conn, [(i, 1, 0.01, "boom") for i in ids(50, start=200)], "t1")
        record_dead_letters(conn, [DeadLetter(i, "Boom", "boom", 3) for i in ids(20, start=250)], "t1")
        conn.execute(sa.text("UPDATE jobs SET state = 'dead' WHERE repo_id >= 'r00250' AND repo_id < 'r00270'"))
    kept = assert_run_counters_exact(database_url, runs)
    assert (kept[first]["tagged"], kept[first]["jobs:done"], kept[first]["jobs:dead"]) == (200, 200, 20)
    with transaction(database_url) as conn:  # a re-tag of some by another run, and new ones
        mark_queued(conn, ids(150, start=100), run_id=second)
        upsert_results(conn, [row(i, [2], second) for i in ids(150, start=100)])
        mark_done(conn, ids(150, start=100), "t2")
    kept = assert_run_counters_exact(database_url, runs)
    assert (kept[first]["tagged"], kept[first]["results"], kept[second]["tagged"]) == (200, 100, 150)
    with transaction(database_url) as conn:  # the same batch redelivered: counted once
        upsert_results(conn, [row(i, [2], second) for i in ids(150, start=100)])
        mark_done(conn, ids(150, start=100), "t2")
    assert assert_run_counters_exact(database_url, runs)[second]["tagged"] == 150
    with transaction(database_url) as conn:  # a pin and an unpin: no run's write
        pin_tags(conn, "r00120", [5], set_by="ann", note="", taxonomy_version=1)
        pin_tags(conn, "r00001", [5], set_by="ann", note="", taxonomy_version=1)
    with transaction(database_url) as conn:
        unpin_tags(conn, "r00120")
    assert_run_counters_exact(database_url, runs)
    with transaction(database_url) as conn:  # restores the first run's versions: nobody tagged anew
        rollback_run(conn, second)
    kept = assert_run_counters_exact(database_url, runs)
    assert (kept[first]["tagged"], kept[first]["results"], kept[second]["tagged"]) == (200, 199, 150)
    canary = new_run(database_url, "canary")
    with transaction(database_url) as conn:  # a promote writes live results under the canary's id
        insert_shadow_queued(conn, canary, ids(40, start=180))
        write_shadow_results(conn, canary, [row(i, [7], None) | {"state": "done", "error": None}
                                            for i in ids(40, start=180)])
    with transaction(database_url) as conn:
        promote_shadow_results(conn, canary)
    kept = assert_run_counters_exact(database_url, [*runs, canary])
    assert kept[canary]["tagged"] == kept[canary]["results"] == 40
    with transaction(database_url) as conn:  # jobs deleted with their repos; TRUNCATE
        conn.execute(sa.text("DELETE FROM repos WHERE id >= 'r00290'"))
    with transaction(database_url) as conn:
        conn.execute(sa.text("TRUNCATE jobs"))
    assert_run_counters_exact(database_url, [*runs, canary])
    assert_counts_exact(database_url)


def assert_canary_counters_exact(url: str, run_ids: list[int]) -> dict[int, dict[str, int]]:
    with transaction(url) as conn:
        kept = run_counters(conn, run_ids, CANARY_COUNTERS)
        rows = conn.execute(sa.text("SELECT run_id, state, count(*), count(promoted_at) FROM shadow_results "
                                    "GROUP BY run_id, state")).all()
    counted = {run: dict.fromkeys(CANARY_COUNTERS, 0) for run in run_ids}
    for run, state, n, promoted in rows:
        if run in counted:
            counted[run][f"shadow_results:{state}"] += n
            counted[run]["shadow_results:promoted"] += promoted
    assert kept == counted
    return kept


def test_canary_counters_stay_exact_through_every_write_path(database_url):
    add_repos(database_url)
    canary, other = new_run(database_url, "canary"), new_run(database_url, "canary")
    with transaction(database_url) as conn:
        insert_shadow_queued(conn, canary, ids(100))
        insert_shadow_queued(conn, other, ids(30))
    assert assert_canary_counters_exact(database_url, [canary, other])[canary]["shadow_results:queued"] == 100
    with transaction(database_url) as conn:
        write_shadow_results(conn, canary, [row(i, [7], None) | {"state": "done", "error": None} for i in ids(60)])
        write_shadow_results(conn, canary, [{"repo_id": i, "state": "failed", "attempts": 1, "error": "boom"}
                                            for i in ids(20, start=50)])  # 10 already done: untouched
        write_shadow_results(conn, canary, [{"repo_id": i, "state": "dead", "attempts": 3, "error": "boom"}
                                            for i in ids(10, start=90)])
    kept = assert_canary_counters_exact(database_url, [canary, other])
    assert [kept[canary][f"shadow_results:{s}"] for s in ("queued", "done", "failed", "dead")] == [20, 60, 10, 10]
    with transaction(database_url) as conn:
        assert canaries_pending(conn) == {canary: 30, other: 30}
        (progress,) = runs_progress(conn, [canary])
        first, last = conn.execute(sa.text("SELECT min(updated_at), max(updated_at) FROM shadow_results "
                                           "WHERE run_id = :r AND state = 'done'"), {"r": canary}).one()
    assert (progress.enqueued, progress.tagged, progress.pending, progress.dead) == (100, 60, 30, 10)
    assert (progress.first_tagged_at, progress.last_tagged_at) == (first, last)
    with transaction(database_url) as conn:
        promote_shadow_results(conn, canary)
    assert assert_canary_counters_exact(database_url, [canary, other])[canary]["shadow_results:promoted"] == 60
    with transaction(database_url) as conn:
        assert canaries_pending(conn) == {other: 30}  # promoted: nobody waits for it
        conn.execute(sa.text("DELETE FROM runs WHERE id = :r"), {"r": other})  # cascades into its sample
        conn.execute(sa.text("DELETE FROM repos WHERE id >= 'r00095'"))
    assert_canary_counters_exact(database_url, [canary, other])
    with transaction(database_url) as conn:
        conn.execute(sa.text("TRUNCATE shadow_results"))
    assert_canary_counters_exact(database_url, [canary, other])


def test_run_progress_reads_first_and_last_result_of_live_and_replaced(database_url):
    add_repos(database_url, 10)
    first, second = new_run(database_url), new_run(database_url)
    with transaction(database_url) as conn:
        upsert_results(conn, [row(i, [1], first) for i in ids(10)])
    with transaction(database_url) as conn:
        upsert_results(conn, [row(i, [2], second) for i in ids(5)])
    with transaction(database_url) as conn:
        spans = conn.execute(sa.text(
            "SELECT run_id, min(tagged_at), max(tagged_at), count(DISTINCT repo_id) FROM (SELECT run_id, repo_id, "
            "tagged_at FROM results UNION ALL SELECT run_id, repo_id, tagged_at FROM result_history) AS w "
            "GROUP BY run_id")).all()
        progress = runs_progress(conn, [second, first, 999])
    assert [(p.run_id, p.first_tagged_at, p.last_tagged_at, p.tagged) for p in progress] == sorted(
        [tuple(span) for span in spans], key=lambda span: span[0] != second)


def test_import_reports_duplicates_across_chunks_without_keeping_ids(database_url, tmp_path, monkeypatch):
    """Ids seen are the server's (a temporary table), not the client's: a repeat two chunks later is
    still found, and the report holds counts and a bounded list of messages only."""
    monkeypatch.setattr(importer, "CHUNK_ROWS", 2)
    monkeypatch.setattr(importer, "MAX_MESSAGES", 3)
    lines = [{"id": f"i{n}", "readme": f"readme {n}"} for n in range(7)]
    lines += [{"id": "i0", "readme": "again"}, {"id": "i5", "readme": "again"}, {"id": "i6", "readme": "x"},
              {"id": "i6", "readme": "last"}, {"id": "i1", "readme": "again"}]
    path = tmp_path / "repos.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    report = importer.import_repos(database_url, path)
    assert (report.imported, report.duplicates, report.rejected) == (7, 5, 0)
    assert report.warnings == ["line 8: repo 'i0' already on line 1: this later line wins",
                               "line 9: repo 'i5' already on line 6: this later line wins",
                               "line 10: repo 'i6' already on line 7: this later line wins"]
    assert not any(isinstance(value, (set, dict)) for value in vars(report).values())
    with transaction(database_url) as conn:
        readmes = dict(conn.execute(sa.text("SELECT id, readme FROM repos")).all())
    assert readmes["i0"] == "again" and readmes["i6"] == "last" and readmes["i2"] == "readme 2"
    assert_counts_exact(database_url)


def test_export_changed_since_covers_every_kind_of_change(database_url, env, tmp_path):
    add_repos(database_url, 12)
    first, second = new_run(database_url), new_run(database_url)
    with transaction(database_url) as conn:
        upsert_results(conn, [row(i, [1], first) for i in ids(6)])
        pin_tags(conn, "r00006", [2], set_by="ann", note="", taxonomy_version=1)
        upsert_results(conn, [row(i, [1], second) for i in ids(2, start=7)])  # r7, r8: second's first tagging
    full = run_cli(env, "export")
    assert [json.loads(line)["id"] for line in full.stdout.splitlines()] == [*ids(7), "r00007", "r00008"]
    as_of = full.stderr.split("as of ")[1].split()[0]
    with transaction(database_url) as conn:
        upsert_results(conn, [row("r00009", [3], second)])  # new
        upsert_results(conn, [row("r00000", [3], second)])  # re-tagged
        pin_tags(conn, "r00001", [2], set_by="ann", note="", taxonomy_version=1)  # pinned
        unpin_tags(conn, "r00006")  # unpinned, no machine version before: removed
    run_cli(env, "rollback", str(second))  # r0 restored to first's, r7 r8 r9 untagged: removed
    changed = run_cli(env, "export", "--changed-since", as_of).stdout.splitlines()
    got = {json.loads(line)["id"]: json.loads(line) for line in changed}
    assert sorted(got) == ["r00000", "r00001", "r00006", "r00007", "r00008", "r00009"]
    assert all(got[i] == {"id": i, "removed": True} for i in ("r00006", "r00007", "r00008", "r00009"))
    assert got["r00001"]["source"] == "manual" and [t["id"] for t in got["r00000"]["tags"]] == [1]
    assert run_cli(env, "export", "--since-run", str(second)).stdout.count("\n") >= len(got)


def test_deleting_repos_deletes_their_history(database_url):
    """History has no foreign key to repos (migration 0008): its trigger does what the cascade did."""
    add_repos(database_url, 4)
    first, second = new_run(database_url), new_run(database_url)
    with transaction(database_url) as conn:
        upsert_results(conn, [row(i, [1], first) for i in ids(4)])
        upsert_results(conn, [row(i, [2], second) for i in ids(4)])
        conn.execute(sa.text("DELETE FROM repos WHERE id IN ('r00001', 'r00002')"))
        left = conn.execute(sa.text("SELECT repo_id FROM result_history ORDER BY repo_id")).scalars().all()
    assert left == ["r00000", "r00003"]


def test_history_prune_keeps_n_versions_and_reports_impossible_rollbacks(database_url, env):
    add_repos(database_url, 20)
    runs = [new_run(database_url) for _ in range(4)]
    with transaction(database_url) as conn:
        for n, run in enumerate(runs):
            upsert_results(conn, [row(i, [n + 1], run) for i in ids(20)])
    dry = run_cli(env, "history", "prune", "--keep", "1", "--dry-run")
    assert "would prune 40 history versions" in dry.stdout
    assert f"2 runs: {runs[1]} (20 versions), {runs[2]} (20 versions)" in dry.stderr
    with transaction(database_url) as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM result_history")).scalar_one() == 60  # dry: unchanged
        report = prune_history(conn, keep=1, before=None, dry_run=False)
        per_repo = set(conn.execute(sa.text("SELECT count(*) FROM result_history GROUP BY repo_id")).scalars())
    assert report.versions == 40 and sorted(report.lost_rollbacks) == [runs[1], runs[2]] and per_repo == {1}
    with pytest.raises(InputError, match="can no longer be rolled back"), transaction(database_url) as conn:
        rollback_run(conn, runs[1])
    assert "20 restored" in run_cli(env, "rollback", str(runs[3])).stdout  # its version before is kept
    with transaction(database_url) as conn:
        none = prune_history(conn, keep=None, before=datetime.now(UTC) - timedelta(days=1), dry_run=False)
    assert none.versions == 0
    run_cli(env, "history", "r00001")  # `tagger history ID` still shows a repo


def test_rollback_and_promote_plan_no_nested_loop_over_a_run_the_statistics_do_not_know(database_url):
    """A run's rows are rarely in the planner's statistics (a run under a tenth of a table never triggers
    auto-analyze): estimated at one row, a nested loop over them is quadratic in the run's size. The
    bulk settings rule nested loops out of rollback's and promote's statements."""
    loaded = load_index(database_url, IndexShape(2000), {"backend": "keyword", "model": "m", "prompt_version": "p",
                                                         "taxonomy_version": 1})  # analyzed at the end
    retag, repos = make_retag_run(database_url, 4, loaded.live_run)  # after the analyze: unknown to it
    assert repos > 300
    statements = [(_ROLLBACK_WRITES, {"run": retag}), (_LEFT_ALONE, {"run": retag, "sample": 20}),
                  (_PROMOTE_REPLACE, {"run": loaded.canary_run}), (_PROMOTE_NEW, {"run": loaded.canary_run})]
    with transaction(database_url) as conn:
        bulk_write_settings(conn)
        for statement, params in statements:
            plan = "\n".join(conn.execute(sa.text(f"EXPLAIN {statement.text}"), params).scalars())
            assert "Nested Loop" not in plan, plan
        rolled_back = rollback_run(conn, retag)
    assert rolled_back.restored == repos


def test_the_import_floor_copies_the_import_files_rows_and_leaves_nothing_behind(database_url, tmp_path):
    """The index bench's floor for `tagger import`: the same rows, as one binary COPY stream, into a table
    shaped as repos; measured, then dropped."""
    lines = tmp_path / "import.jsonl"
    write_import_file(lines, 40)
    stream = tmp_path / "floor.copy"
    assert write_floor_copy(lines, stream) == 40
    with transaction(database_url) as conn:
        conn.execute(sa.text("CREATE TEMP TABLE floor_check (LIKE repos INCLUDING ALL)"))
        driver = conn.connection.driver_connection
        with driver.cursor() as cursor, cursor.copy(
                f"COPY floor_check {REPOS_COPY_COLUMNS} FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(stream.read_bytes())
        copied = conn.execute(sa.text("SELECT id, name, readme, readme_hash FROM floor_check ORDER BY id")).all()
    expected = sorted((row["id"], row["name"], row["readme"], readme_hash(row["readme"]))
                      for row in map(json.loads, lines.read_text().splitlines()))
    assert [tuple(row) for row in copied] == expected
    assert import_floor_rows_per_s(database_url, lines, tmp_path) > 0
    with transaction(database_url) as conn:
        assert conn.execute(sa.text("SELECT to_regclass(:t)"), {"t": _FLOOR_TABLE}).scalar() is None
    assert not (tmp_path / "floor.copy").exists()
