"""Fault tests (acceptance): real Redis, PostgreSQL and `tagger worker` subprocesses, keyword backend.

Each ends with the same check: every imported repo has exactly one result or one dead letter, with
the expected split, and no repo has neither. The figures each prints (`pytest -s`) are the ones in
docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import redis
import sqlalchemy as sa

from bench import private_redis
from db.dead_letters import list_dead_letters
from db.engine import transaction
from db.jobs import status_counts
from db.repos import upsert_repos
from tests.support.data import readme_fixture_rows
from tests.support.faults import TcpProxy, assert_every_repo_accounted
from tests.support.faulty_backend import fault_marker
from tests.support.logs import log_events
from tests.support.processes import TAGGER, run_cli, wait_until, worker_process
from workers.contract import queue_depth

REPO_ROOT = Path(__file__).resolve().parents[2]


def import_repos(database_url: str, n: int, prefix: str = "r") -> list[str]:
    """``n`` repos whose READMEs are the fixtures, cycled."""
    fixtures = readme_fixture_rows()
    rows = [
        {"id": f"{prefix}{i:05d}", "name": f"owner/{prefix}{i}", "readme": fixtures[i % len(fixtures)]["readme"]}
        for i in range(n)
    ]
    with transaction(database_url) as conn:
        upsert_repos(conn, rows)
    return [r["id"] for r in rows]


def counts(database_url: str) -> dict[str, int]:
    with transaction(database_url) as conn:
        return status_counts(conn)


def figure(name: str, **values: object) -> None:
    print(f"\nFIGURE {name}: " + ", ".join(f"{k}={v}" for k, v in values.items()))


def tagged_in_logs(*logs: Path) -> int:
    return sum(int(e.get("tagged", 0)) for log in logs for e in log_events(log, "batch_tagged"))


def test_sigkill_worker_mid_run_loses_nothing(env, settings, tmp_path):
    """Late acks + the Redis visibility timeout: the batches a killed worker held are delivered again.
    A message the worker had taken off the queue but not yet recorded as held when the kill came
    (kombu's window between BRPOP and its unacked record) is the sweeper's, run here as beat would."""
    n = 2000
    import_repos(settings.database_url, n)
    with private_redis() as broker:
        # At a model's pace: on a fast machine the keyword backend could finish before the kill.
        env = {**env, "TAGGER_BROKER_URL": broker, "TAGGER_VISIBILITY_TIMEOUT_S": "1",
               "TAGGER_BACKEND": "tests.support.faulty_backend:slow_factory"}
        log1, log2 = tmp_path / "worker1.log", tmp_path / "worker2.log"
        with worker_process(env, "--hostname", "w1@%h", log=log1) as first:
            run_cli(env, "enqueue", "--all", "--batch-size", "20")
            wait_until(lambda: counts(settings.database_url)["tagged"] >= n // 4, timeout=120, what="a quarter tagged")
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
            killed_at = time.monotonic()
            tagged_at_kill = counts(settings.database_url)["tagged"]
        client = redis.Redis.from_url(broker)
        held = client.zrange("unacked_index", 0, -1, withscores=True)
        held_tasks = [json.loads(client.hget("unacked", tag))[0]["headers"]["id"] for tag, _ in held]
        # The new worker restores held messages when it starts, once they are older than the timeout.
        wait_until(lambda: all(score < time.time() - 1 for _, score in held), timeout=10, what="visibility timeout")
        swept: list[int] = []

        def swept_and_all_tagged() -> bool:
            if counts(settings.database_url)["tagged"] == n:
                return True
            swept.append(int(run_cli(env, "sweep", "--older-than", "5").stdout.split()[1]))  # "re-enqueued N"
            return False

        with worker_process(env, "--hostname", "w2@%h", log=log2):
            wait_until(lambda: all(f"[{task}] received" in log2.read_text() for task in held_tasks), timeout=60,
                       interval=0.2, what="the held messages redelivered")
            wait_until(swept_and_all_tagged, timeout=180, interval=1, what="all repos tagged after the kill")
            recovered_s = time.monotonic() - killed_at
            wait_until(lambda: queue_depth(broker, settings.queue) == 0, timeout=30, what="queue drained")
        client.close()
    assert held_tasks  # the kill came mid-run: the worker held its batches
    final = counts(settings.database_url)
    assert (final["pending"], final["failed"], final["done"]) == (0, 0, n)
    assert_every_repo_accounted(settings.database_url, tagged=n)
    figure("sigkill", repos=n, tagged_at_kill=tagged_at_kill, messages_held_at_kill=len(held),
           repos_swept=sum(swept), repos_tagged_twice=tagged_in_logs(log1, log2) - n,
           kill_to_all_tagged_s=round(recovered_s, 1))


def _terminate_backends(database_url: str) -> int:
    """pg_terminate_backend on the workers' sessions of this test's database (never anyone else's)."""
    engine = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            return len(conn.execute(sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = 'repo-tagger' AND pid <> pg_backend_pid()"
            )).all())
    finally:
        engine.dispose()


def test_postgres_unreachable_mid_run_loses_nothing(env, settings, tmp_path):
    """Whole-batch DatabaseUnavailable → Celery retry with backoff; nothing is acked as done unless stored."""
    n = 1000
    outage_s = 5.0
    import_repos(settings.database_url, n)
    url = sa.engine.make_url(settings.database_url)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    # The worker reaches PostgreSQL only through the proxy; the test and the producer go direct.
    proxied = url.set(port=proxy.port).render_as_string(hide_password=False)
    # Backoffs long enough that the 30 attempts an infrastructure fault gets outlast the outage.
    worker_env = {**env, "TAGGER_DATABASE_URL": proxied, "TAGGER_RETRY_BASE_S": "0.1", "TAGGER_RETRY_MAX_S": "1"}
    log = tmp_path / "worker.log"
    try:
        with worker_process(worker_env, log=log):
            run_cli(env, "enqueue", "--all", "--batch-size", "10")
            wait_until(lambda: counts(settings.database_url)["tagged"] >= n // 5, timeout=120, what="a fifth tagged")
            proxy.cut()
            terminated = _terminate_backends(settings.database_url)
            cut_at = time.monotonic()
            tagged_at_cut = counts(settings.database_url)["tagged"]
            # The outage is the fault itself: it lasts outage_s, and the worker must have noticed it.
            wait_until(lambda: time.monotonic() - cut_at >= outage_s
                       and any("database unavailable" in e.get("error", "") for e in log_events(log, "task_retry")),
                       timeout=60, what="the worker retrying through the outage")
            retries_during_outage = len(log_events(log, "task_retry"))
            proxy.restore()
            restored_at = time.monotonic()
            wait_until(lambda: counts(settings.database_url)["tagged"] == n, timeout=120, interval=0.2,
                       what="all repos tagged after the outage")
            recovered_s = time.monotonic() - restored_at
            wait_until(lambda: queue_depth(settings.broker_url, settings.queue) == 0, timeout=30, what="queue drained")
    finally:
        proxy.close()
    retry_events = log_events(log, "task_retry")
    assert all(e.get("task_id") and e.get("repo_ids") for e in retry_events)
    assert not log_events(log, "task_abandoned")
    assert "raised unexpected" not in log.read_text(errors="replace")  # no message given up by Celery either
    final = counts(settings.database_url)
    assert (final["pending"], final["failed"], final["dead"]) == (0, 0, 0)
    assert_every_repo_accounted(settings.database_url, tagged=n)
    figure("postgres_outage", repos=n, outage_s=round(restored_at - cut_at, 1), backends_terminated=terminated,
           tagged_at_cut=tagged_at_cut, batch_retries_logged=retries_during_outage,
           restore_to_all_tagged_s=round(recovered_s, 1))


def test_redis_flushall_mid_run_sweeper_recovers(env, settings, tmp_path):
    """Messages lost inside Redis cost time only: the sweeper re-sends what Postgres says is still queued.

    The test plays beat's periodic sweep by running `tagger sweep` about once a second."""
    n = 1000
    older_than_s = 3
    import_repos(settings.database_url, n)
    with private_redis() as broker:
        env = {**env, "TAGGER_BROKER_URL": broker}
        log = tmp_path / "worker.log"
        client = redis.Redis.from_url(broker)
        swept: list[int] = []
        with worker_process(env, log=log):
            run_cli(env, "enqueue", "--all", "--batch-size", "10")
            wait_until(lambda: counts(settings.database_url)["tagged"] >= n // 5, timeout=120, what="a fifth tagged")
            client.flushall()
            flushed_at = time.monotonic()
            tagged_at_flush = counts(settings.database_url)["tagged"]

            def swept_and_all_tagged() -> bool:
                if counts(settings.database_url)["tagged"] == n:
                    return True
                out = run_cli(env, "sweep", "--older-than", str(older_than_s)).stdout
                swept.append(int(out.split()[1]))  # "re-enqueued N repos"
                return False

            wait_until(swept_and_all_tagged, timeout=120, interval=0.5, what="all repos tagged after FLUSHALL")
            recovered_s = time.monotonic() - flushed_at
            wait_until(lambda: queue_depth(broker, settings.queue) == 0, timeout=30, what="queue drained")
        client.close()
    # Everything not tagged at the flush was lost with it (bar the batches in the hands of the worker's
    # two threads) and swept.
    assert sum(swept) >= n - tagged_at_flush - 2 * 10
    final = counts(settings.database_url)
    assert (final["pending"], final["failed"], final["dead"]) == (0, 0, 0)
    assert_every_repo_accounted(settings.database_url, tagged=n)
    figure("redis_flushall", repos=n, tagged_at_flush=tagged_at_flush, sweeps=len(swept), repos_swept=sum(swept),
           flush_to_all_tagged_s=round(recovered_s, 1))


def test_failing_backend_dead_letters_then_requeue_tags(env, settings, tmp_path, repo_root):
    """Per-repo isolation: the READMEs the backend fails on are retried, then dead-lettered with their
    error class after the configured attempts; their neighbours are tagged. `tagger dlq requeue` with a
    healthy backend tags them and empties the dead-letter list."""
    n = 60
    ids = import_repos(settings.database_url, n)
    faults = {ids[3]: "BackendTimeout", ids[17]: "BackendTimeout", ids[30]: "BackendUnavailable",
              ids[41]: "garbage", ids[59]: "garbage"}
    fixtures = readme_fixture_rows()
    with transaction(settings.database_url) as conn:
        upsert_repos(conn, [{"id": i, "name": "", "readme": f"{fault_marker(kind)}\n\n{fixtures[0]['readme']}"}
                            for i, kind in faults.items()])
    faulty_env = {**env, "TAGGER_BACKEND": "tests.support.faulty_backend:factory", "TAGGER_MAX_ATTEMPTS": "3",
                  "PYTHONPATH": str(repo_root)}
    log = tmp_path / "faulty.log"
    with worker_process(faulty_env, log=log):
        run_cli(env, "enqueue", "--all", "--batch-size", "8")
        wait_until(lambda: (c := counts(settings.database_url))["tagged"] + c["dead"] == n, timeout=120,
                   interval=0.2, what="every repo tagged or dead-lettered")
    assert_every_repo_accounted(settings.database_url, tagged=n - len(faults), dead=len(faults))
    letters = {d["repo_id"]: d for d in json.loads(run_cli(env, "dlq", "list", "--json").stdout)}
    expected_class = {"BackendTimeout": "BackendTimeout", "BackendUnavailable": "BackendUnavailable",
                      "garbage": "MalformedOutput"}
    # Transient kinds get TAGGER_MAX_ATTEMPTS attempts; malformed output one model call more than the first.
    expected_attempts = {"BackendTimeout": 3, "BackendUnavailable": 3, "garbage": 2}
    assert {i: (d["error_class"], d["attempts"]) for i, d in letters.items()} == {
        i: (expected_class[k], expected_attempts[k]) for i, k in faults.items()}
    assert all(d["task_id"] for d in letters.values())
    # Every retry and dead letter was logged under its stable name, with the repo id and the task id.
    retried = log_events(log, "task_retry")
    dead = log_events(log, "dead_lettered")
    assert {e["repo_id"] for e in dead} == set(faults) and all(e.get("task_id") for e in dead)
    assert {e["repo_id"] for e in retried} == set(faults) and all(e.get("task_id") for e in retried)
    assert len(retried) == sum(expected_attempts[k] - 1 for k in faults.values())

    log2 = tmp_path / "healthy.log"
    with worker_process(env, log=log2):  # the keyword backend: healthy
        requeued = run_cli(env, "dlq", "requeue", "--all")
        assert f"requeued {len(faults)} repos" in requeued.stdout
        wait_until(lambda: counts(settings.database_url)["tagged"] == n, timeout=60, interval=0.2,
                   what="requeued repos tagged")
    assert run_cli(env, "dlq", "list").stdout.strip() == "no dead letters"
    assert json.loads(run_cli(env, "dlq", "list", "--json").stdout) == []
    assert_every_repo_accounted(settings.database_url, tagged=n)
    figure("failing_backend", repos=n, dead_lettered=len(faults), retries_logged=len(retried),
           tagged_after_requeue=len(faults))


def test_same_ids_enqueued_twice_at_once(env, settings, tmp_path):
    """Two producers enqueue the same ids concurrently while two workers tag overlapping batches:
    one result row per repo, and no deadlock."""
    n = 1000
    ids = import_repos(settings.database_url, n)
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join(ids) + "\n", encoding="utf-8")
    logs = [tmp_path / "w1.log", tmp_path / "w2.log"]
    with worker_process(env, "--hostname", "w1@%h", log=logs[0]), \
            worker_process(env, "--hostname", "w2@%h", log=logs[1]):
        started = time.monotonic()
        producers = [subprocess.Popen([*TAGGER, "enqueue", "--file", str(ids_file), "--batch-size", "25"], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outputs = [p.communicate(timeout=120) for p in producers]
        assert [p.returncode for p in producers] == [0, 0], outputs
        assert all(f"enqueued {n} repos" in out for out, _ in outputs)
        wait_until(lambda: queue_depth(settings.broker_url, settings.queue) == 0
                   and counts(settings.database_url)["pending"] == 0, timeout=120, interval=0.2,
                   what="both producers' batches done")
        elapsed = time.monotonic() - started
    engine = sa.create_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            rows, distinct = conn.execute(sa.text("SELECT count(*), count(DISTINCT repo_id) FROM results")).one()
    finally:
        engine.dispose()
    assert rows == distinct == n
    tagged_total = tagged_in_logs(*logs)
    assert tagged_total >= n  # every repo was tagged at least once, most twice
    text = "".join(log.read_text(errors="replace") for log in logs).lower()
    assert "deadlock" not in text
    assert not [e for log in logs for e in log_events(log, "task_retry")]  # no batch hit a database error
    assert_every_repo_accounted(settings.database_url, tagged=n)
    figure("double_enqueue", repos=n, messages=2 * n // 25, repos_tagged_in_total=tagged_total,
           result_rows=rows, seconds=round(elapsed, 1))


# --- idempotence, in process: the races are easier to stage exactly here ---------------------------


def test_redelivered_batch_leaves_one_result_and_the_newest_readme_wins(settings):
    from tagger.backends.keyword import KeywordTagger
    from workers.batch import process_batch
    from workers.runtime import Runtime

    fixtures = readme_fixture_rows()
    old, new = fixtures[0]["readme"], fixtures[1]["readme"]
    with transaction(settings.database_url) as conn:
        upsert_repos(conn, [{"id": "r", "name": "", "readme": old}, {"id": "s", "name": "", "readme": old}])

    class ReimportsMidBatch(KeywordTagger):
        """While this (slow) worker tags README v1, the README changes and a second worker tags v2."""

        def generate(self, prompts):
            with transaction(settings.database_url) as conn:
                upsert_repos(conn, [{"id": "r", "name": "", "readme": new}])
            process_batch(Runtime.start(settings, tagger=KeywordTagger()), ["r"], "fast-worker")
            return super().generate(prompts)

    process_batch(Runtime.start(settings, tagger=ReimportsMidBatch()), ["r", "s"], "slow-worker")
    process_batch(Runtime.start(settings, tagger=KeywordTagger()), ["r", "s"], "redelivered")  # same batch again
    engine = sa.create_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT r.repo_id, r.readme_version, r.readme_hash = p.readme_hash "
                                        "FROM results r JOIN repos p ON p.id = r.repo_id ORDER BY 1")).all()
    finally:
        engine.dispose()
    assert [tuple(row) for row in rows] == [("r", 2, True), ("s", 1, True)]


def _drain_like_the_task(runtime, batch):
    """Run batches as workers.tasks.tag_batch does: retries re-sent, split in halves when the whole
    backend call failed. Returns how many backend calls it took."""
    from workers.batch import process_batch

    pending, calls = [batch], 0
    while pending:
        ids = pending.pop(0)
        outcome = process_batch(runtime, ids, f"t{calls}")
        calls += 1
        retry = outcome.retry_ids
        middle = (len(retry) + 1) // 2 if outcome.split_retry else len(retry)
        pending += [group for group in (retry[:middle], retry[middle:]) if group]
    return calls


def test_a_backend_crash_costs_attempts_not_the_message(settings):
    """A whole backend call that raises something unexpected is counted against each repo's attempts
    (ending in dead letters), instead of failing the message over and over; while several repos share
    the failure it is not counted, and the batch is retried in halves until each repo fails alone."""
    from tagger.backends.keyword import KeywordTagger
    from workers.batch import process_batch
    from workers.runtime import Runtime

    class Crashing(KeywordTagger):
        def generate(self, prompts):
            raise RuntimeError("segfault-ish")

    import_repos(settings.database_url, 3)
    runtime = Runtime.start(settings.model_copy(update={"max_attempts": 2}), tagger=Crashing())
    first = process_batch(runtime, ["r00000", "r00001", "r00002"], "t1")
    assert first.retry_ids == ["r00000", "r00001", "r00002"] and first.split_retry and not first.dead
    _drain_like_the_task(runtime, first.retry_ids)
    assert_every_repo_accounted(settings.database_url, tagged=0, dead=3)
    with transaction(settings.database_url) as conn:
        assert {d.attempts for d in list_dead_letters(conn)} == {2}  # counted only when alone


def test_one_readme_that_breaks_the_whole_call_does_not_cost_its_neighbours(settings):
    from tagger.backends.keyword import KeywordTagger
    from workers.runtime import Runtime

    class BrokenByOneReadme(KeywordTagger):
        def generate(self, prompts):
            if any("poison" in p.readme for p in prompts):
                raise RuntimeError("the server fell over")
            return super().generate(prompts)

    import_repos(settings.database_url, 8)
    with transaction(settings.database_url) as conn:
        upsert_repos(conn, [{"id": "r00005", "name": "x/poison", "readme": "A CLI tool. poison"}])
    runtime = Runtime.start(settings.model_copy(update={"max_attempts": 3}), tagger=BrokenByOneReadme())
    calls = _drain_like_the_task(runtime, [f"r{i:05d}" for i in range(8)])
    assert_every_repo_accounted(settings.database_url, tagged=7, dead=1)
    with transaction(settings.database_url) as conn:
        assert [(d.repo_id, d.attempts) for d in list_dead_letters(conn)] == [("r00005", 3)]
    assert calls <= 1 + 2 + 2 + 2 + 3  # log2(8) halvings, then the poisoned repo's own attempts
