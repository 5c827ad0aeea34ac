"""`tagger beat`: one leader at a time, a standby that takes over, and no repo ever enqueued twice."""

from __future__ import annotations

import os
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from db.engine import transaction
from db.repos import upsert_repos
from producer.beat import LeaderLock, lock_key
from tests.support.data import readme_fixture_rows
from tests.support.logs import log_events
from tests.support.processes import TAGGER, wait_until
from tests.support.queues import queued_ids
from tests.support.services import REDIS_URL


@contextmanager
def beat_process(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen([*TAGGER, "beat"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _refreshes(log: Path) -> int:
    return sum(1 for e in log_events(log, "enqueued") if e.get("selection") == "stale")


def test_two_beats_one_leader_each_stale_repo_enqueued_once(settings, env, tmp_path):
    rows = readme_fixture_rows()
    with transaction(settings.database_url) as conn:
        upsert_repos(conn, rows)
    env = {**env, "TAGGER_REFRESH_INTERVAL_S": "1", "TAGGER_SWEEP_INTERVAL_S": "1", "TAGGER_BEAT_LOCK_TTL_S": "2",
           "TAGGER_LOG_LEVEL": "INFO"}
    first_log, second_log = tmp_path / "beat-1.log", tmp_path / "beat-2.log"

    with beat_process(env, first_log) as first:
        wait_until(lambda: log_events(first_log, "beat_leader"), timeout=60, what="the first beat to lead")
        with beat_process(env, second_log) as second:
            wait_until(lambda: log_events(second_log, "beat_standby"), timeout=60, what="the second beat to stand by")
            # No GPU worker runs: what the refreshes send stays in the queue, to be counted.
            wait_until(lambda: _refreshes(first_log) >= 3, timeout=60, what="three scheduled refreshes")
            counts = Counter(queued_ids(settings.queue))
            assert sorted(counts) == sorted(r["id"] for r in rows)
            assert set(counts.values()) == {1}
            assert not log_events(second_log, "beat_leader") and _refreshes(second_log) == 0

            # The leader dies without releasing its lock: the standby takes over once it lapses.
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
            wait_until(lambda: log_events(second_log, "beat_leader"), timeout=60, what="the standby to take over")
            with transaction(settings.database_url) as conn:
                upsert_repos(conn, [{"id": "new-repo", "name": "o/new", "readme": "# new\nA Rust CLI tool."}])
            wait_until(lambda: "new-repo" in queued_ids(settings.queue), timeout=60, what="the new repo enqueued")
            wait_until(lambda: _refreshes(second_log) >= 3, timeout=60, what="three more refreshes")
            counts = Counter(queued_ids(settings.queue))
            assert len(counts) == len(rows) + 1 and set(counts.values()) == {1}

            # A leader whose lock is taken from it stops at once, with status 1 (a supervisor restarts it).
            client = redis.Redis.from_url(REDIS_URL)
            client.set(lock_key(settings.queue), "someone-else", px=60_000)
            assert second.wait(timeout=60) == 1
            assert log_events(second_log, "beat_lock_lost")
            client.delete(lock_key(settings.queue))
            client.close()


def test_a_stopped_leader_hands_over_at_once(settings, env, tmp_path):
    env = {**env, "TAGGER_BEAT_LOCK_TTL_S": "600"}  # a lapse would take 10 minutes: only a release is quick
    first_log, second_log = tmp_path / "beat-1.log", tmp_path / "beat-2.log"
    with beat_process(env, first_log) as first:
        wait_until(lambda: log_events(first_log, "beat_leader"), timeout=60, what="the first beat to lead")
        with beat_process(env, second_log):
            wait_until(lambda: log_events(second_log, "beat_standby"), timeout=60, what="the standby")
            os.killpg(first.pid, signal.SIGTERM)
            assert first.wait(timeout=60) == 0
            assert log_events(first_log, "beat_stopped")[0]["lost_leadership"] is False
            wait_until(lambda: log_events(second_log, "beat_leader"), timeout=60, what="the standby to take over")
    client = redis.Redis.from_url(REDIS_URL)
    client.delete(lock_key(settings.queue))  # the second was killed holding a 10-minute lock
    client.close()


def test_leader_lock_belongs_to_its_token():
    client = redis.Redis.from_url(REDIS_URL)
    key = f"tagger-test-lock-{os.getpid()}"
    try:
        mine, theirs = LeaderLock(client, key, 5), LeaderLock(client, key, 5)
        assert mine.try_acquire() and not theirs.try_acquire()
        assert mine.renew() and not theirs.renew()
        theirs.release()  # not theirs to release
        assert mine.holder() == mine.token
        mine.release()
        assert theirs.try_acquire() and not mine.renew()
    finally:
        client.delete(key)
        client.close()
