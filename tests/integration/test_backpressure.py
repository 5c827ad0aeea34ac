"""Backpressure: with no worker the producer stops at the high-water mark; a worker lets it finish."""

from __future__ import annotations

import subprocess
import threading

import redis

from db.engine import transaction
from db.jobs import status_counts
from db.repos import upsert_repos
from producer.enqueue import Sender
from tests.support.logs import log_events
from tests.support.processes import TAGGER, status, wait_until, worker_process
from tests.support.services import REDIS_URL
from workers.contract import queue_depth

HIGH_WATER = 8
REPOS = 60


def test_producer_pauses_at_the_high_water_mark_then_completes(settings, env, tmp_path):
    with transaction(settings.database_url) as conn:
        upsert_repos(conn, [{"id": f"bp{n:03d}", "readme": f"# tool {n}\nA command-line tool in Rust."}
                            for n in range(REPOS)])
    env = {**env, "TAGGER_QUEUE_HIGH_WATER": str(HIGH_WATER)}
    check_every = Sender(settings.model_copy(update={"queue_high_water": HIGH_WATER})).check_every
    bound = HIGH_WATER - 1 + check_every  # what Sender promises for one producer

    out, err = tmp_path / "enqueue.out", tmp_path / "enqueue.log"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        producer = subprocess.Popen([*TAGGER, "enqueue", "--all", "--batch-size", "1"], env=env,
                                    stdout=stdout, stderr=stderr)
        try:
            wait_until(lambda: log_events(err, "enqueue_paused") or producer.poll() is not None, timeout=60,
                       what="the producer to pause")
            assert producer.poll() is None, "the producer finished instead of pausing"
            # No consumer: the depth only grows, so what it is now is the most it ever was.
            depth = queue_depth(settings.broker_url, settings.queue)
            assert HIGH_WATER <= depth <= bound
            with transaction(settings.database_url) as conn:
                assert status_counts(conn)["pending"] == depth  # marked queued exactly what it sent
            assert log_events(err, "enqueue_paused")[0]["queue_depth"] == depth

            peak = [depth]
            done = threading.Event()

            def sample() -> None:
                client = redis.Redis.from_url(REDIS_URL)
                while not done.is_set():
                    peak[0] = max(peak[0], int(client.llen(settings.queue)))
                    done.wait(0.01)
                client.close()

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            with worker_process(env, log=tmp_path / "worker.log"):
                assert producer.wait(timeout=120) == 0
                wait_until(lambda: status(env)["tagged"] == REPOS, timeout=120, interval=0.2,
                           what=f"{REPOS} repos tagged")
            done.set()
            sampler.join()
        finally:
            if producer.poll() is None:
                producer.kill()
                producer.wait()
    assert f"enqueued {REPOS} repos in {REPOS} batches" in out.read_text()
    assert peak[0] <= bound
    assert log_events(err, "enqueue_resumed")


def test_a_tiny_high_water_mark_still_lets_the_producer_resume(settings, monkeypatch):
    """high_water=1 used to wait for a depth below 1 // 2 = 0, i.e. forever."""
    sender = Sender(settings.model_copy(update={"queue_high_water": 1, "batch_size": 1}))
    depths = iter([0, 1, 1, 0, 0])
    monkeypatch.setattr("producer.enqueue.queue_depth", lambda *_: next(depths))
    monkeypatch.setattr("producer.enqueue.BACKPRESSURE_POLL_S", 0)
    sent = []
    monkeypatch.setattr(sender.app, "send_task", lambda *args, **kwargs: sent.append(args))
    with transaction(settings.database_url) as conn:
        upsert_repos(conn, [{"id": i, "readme": "x"} for i in ("a", "b", "c")])
    sender.send(["a", "b", "c"])
    assert len(sent) == 3 and sender.check_every == 1
