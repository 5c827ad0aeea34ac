"""`tagger beat`: Celery beat, and the small worker that runs what it schedules, under a leader lock.

Only the holder of a Redis lock (SET NX PX with a random token, renewed at a third of its TTL) runs
beat. A second `tagger beat` started by mistake waits as a standby and takes over when the leader's
lock lapses (leader killed) or is released (leader stopped). A leader that cannot renew in time stops
scheduling before its lock can lapse, so two leaders never overlap. Behind this, the refresh and the
sweep take a PostgreSQL advisory lock (producer.enqueue.exclusive): even two beats on two different
Redis servers could not send a repo twice.

The scheduled tasks go to a maintenance queue consumed here, never by the GPU workers: a refresh
waiting on backpressure must not hold the very worker that would drain the queue.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
import uuid

import redis
import structlog
from celery import Celery
from celery.beat import EmbeddedService

from producer.enqueue import RunSpec, enqueue_selection, sweep_stuck
from tagger.errors import BrokerUnavailable
from tagger.settings import Settings
from tagger.urls import masked
from workers.contract import REFRESH, SWEEP, broker_client, create_app, is_redis, maintenance_queue

log = structlog.get_logger("tagger.beat")

_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


def lock_key(queue: str) -> str:
    return f"tagger:beat-leader:{queue}"


class LeaderLock:
    """A Redis lock with an owner token: only its holder can renew or release it."""

    def __init__(self, client: redis.Redis, key: str, ttl_s: float) -> None:
        self.client = client
        self.key = key
        self.ttl_ms = int(ttl_s * 1000)
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"

    def try_acquire(self) -> bool:
        return bool(self.client.set(self.key, self.token, nx=True, px=self.ttl_ms))

    def renew(self) -> bool:
        """False when the lock is no longer ours (it lapsed and someone else took it)."""
        return bool(self.client.eval(_RENEW, 1, self.key, self.token, self.ttl_ms))

    def release(self) -> None:
        self.client.eval(_RELEASE, 1, self.key, self.token)

    def holder(self) -> str | None:
        value = self.client.get(self.key)
        return value.decode() if isinstance(value, bytes) else value


class Renewer(threading.Thread):
    """Renews the lock; calls ``on_lost`` once when it is lost, or when renewals kept failing for so
    long that it may lapse before the next try."""

    def __init__(self, lock: LeaderLock, on_lost: threading.Event) -> None:
        super().__init__(name="beat-lock-renewer", daemon=True)
        self.lock = lock
        self.lost = on_lost
        self.stopped = threading.Event()
        self.interval_s = lock.ttl_ms / 1000 / 3

    def run(self) -> None:
        last_ok = time.monotonic()
        while not self.stopped.wait(self.interval_s):
            try:
                if self.lock.renew():
                    last_ok = time.monotonic()
                    continue
                log.error("beat_lock_lost", key=self.lock.key, holder=self.lock.holder())
            except redis.RedisError as exc:
                # Keep trying while the lock surely still stands; give up a renewal interval before
                # it could lapse, so a standby that takes it over never overlaps with us.
                if time.monotonic() - last_ok < self.lock.ttl_ms / 1000 - 1.5 * self.interval_s:
                    log.warning("beat_lock_renew_failed", error=str(exc))
                    continue
                log.error("beat_lock_lost", key=self.lock.key, error=str(exc))
            self.lost.set()
            return


def wait_for_leadership(lock: LeaderLock, poll_s: float) -> None:
    """Block until ``lock`` is ours. A standby says so once, then waits quietly."""
    announced = False
    while True:
        try:
            if lock.try_acquire():
                return
            if not announced:
                log.info("beat_standby", key=lock.key, leader=lock.holder())
                announced = True
        except redis.RedisError as exc:
            log.warning("beat_broker_unavailable", error=str(exc))
        time.sleep(poll_s)


def create_beat_app(settings: Settings) -> Celery:
    """The contract's app with the scheduled tasks on it, for the maintenance worker inside `tagger beat`."""
    app = create_app(settings)

    @app.task(name=SWEEP, ignore_result=True)
    def sweep() -> int:
        # A sweep already running (another beat, a person) covers this one: skip rather than wait.
        return sweep_stuck(settings, wait=False)

    @app.task(name=REFRESH, ignore_result=True)
    def refresh_stale() -> int:
        return enqueue_selection(settings, "stale", wait=False, run=RunSpec("beat", "scheduled refresh")).sent

    return app


def run_beat(settings: Settings, loglevel: str) -> int:
    """Wait for leadership, then run beat and the maintenance worker until stopped. The exit status:
    0 when stopped, 1 when leadership was lost (a supervisor restarts us, as a standby)."""
    if not is_redis(settings.broker_url):
        raise BrokerUnavailable(f"`tagger beat` needs a Redis broker, not {masked(settings.broker_url)!r}")
    app = create_beat_app(settings)
    lock = LeaderLock(broker_client(settings.broker_url), lock_key(settings.queue), settings.beat_lock_ttl_s)
    # A standby asks often (one cheap SET NX): a released lock is taken over within a couple of seconds.
    wait_for_leadership(lock, poll_s=min(2.0, settings.beat_lock_ttl_s / 3))
    log.info("beat_leader", key=lock.key, sweep_interval_s=settings.sweep_interval_s,
             refresh_interval_s=settings.refresh_interval_s)

    lost = threading.Event()
    renewer = Renewer(lock, lost)
    renewer.start()
    # In-memory schedule: leadership moves between processes, a schedule file would not.
    beat = EmbeddedService(app, thread=True, scheduler_cls="celery.beat:Scheduler")

    def on_lost() -> None:
        lost.wait()
        if not renewer.stopped.is_set():
            beat.stop()  # no more sends from here on, before anything else
            os.kill(os.getpid(), signal.SIGTERM)  # the worker's warm shutdown

    threading.Thread(target=on_lost, name="beat-lock-watch", daemon=True).start()
    beat.start()
    app.conf.worker_pool = "threads"
    try:
        # Two threads: a sweep is not held up behind a long refresh.
        app.worker_main(argv=[
            "worker", "--pool", "threads", "--concurrency", "2", "--queues", maintenance_queue(settings.queue),
            "--hostname", f"beat@{socket.gethostname()}", "--loglevel", loglevel, "--without-gossip",
            "--without-mingle",
        ])
    finally:
        renewer.stopped.set()
        beat.stop()
        if not lost.is_set():
            with contextlib.suppress(redis.RedisError):
                lock.release()  # a standby takes over at once, not after the TTL
        log.info("beat_stopped", lost_leadership=lost.is_set())
    return 1 if lost.is_set() else 0
