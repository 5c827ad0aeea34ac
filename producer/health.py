"""`tagger health`: can the pipeline work? The database answers, the broker answers, and at least one
worker answers a Celery ping. Each check says why it failed, without ever showing a secret."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

import redis
import structlog
from celery import Celery

from db.engine import transaction
from db.taxonomy import current_taxonomy_version
from producer.beat import lock_key
from tagger.errors import TaggerError
from tagger.settings import Settings
from workers.contract import broker_client, queue_depth

log = structlog.get_logger("tagger.health")

PING_TIMEOUT_S = 1.0


@dataclass
class Check:
    ok: bool
    detail: str


@dataclass
class HealthReport:
    checks: dict[str, Check] = field(default_factory=dict)
    workers: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return all(c.ok for c in self.checks.values())

    def as_json(self) -> dict[str, object]:
        return {"healthy": self.healthy, "nodes": self.workers,
                **{name: {"ok": c.ok, "detail": c.detail} for name, c in self.checks.items()}}


def check_database(settings: Settings) -> Check:
    try:
        with transaction(settings.database_url) as conn:
            version = current_taxonomy_version(conn)
    except TaggerError as exc:
        return Check(False, f"{type(exc).__name__}: {exc}")
    if version is None:
        return Check(False, "no taxonomy: run `tagger db upgrade`")
    return Check(True, f"taxonomy version {version}")


def check_broker(settings: Settings) -> Check:
    try:
        depth = queue_depth(settings.broker_url, settings.queue)
    except TaggerError as exc:
        return Check(False, f"{type(exc).__name__}: {exc}")
    return Check(True, f"{depth} batches queued in {settings.queue}")


def ping_workers(app: Celery, queue: str, timeout_s: float = PING_TIMEOUT_S, node: str | None = None) -> list[str]:
    """The workers consuming ``queue`` that answer within ``timeout_s`` (none on a broker outage); with
    ``node``: that node, if it answers a ping. Every worker on the broker hears the broadcast, whatever
    its queue: only those of ours count (beat's own worker consumes the maintenance queue: it does not)."""
    try:
        if node:
            replies = app.control.ping(destination=[node], timeout=timeout_s) or []
            return sorted(name for reply in replies for name in reply)
        queues = app.control.inspect(timeout=timeout_s).active_queues() or {}
    except Exception as exc:  # kombu and redis raise their own kinds: no worker is known to answer then
        log.warning("worker_ping_failed", error=f"{type(exc).__name__}: {exc}")
        return []
    return sorted(name for name, consumed in queues.items() if any(q.get("name") == queue for q in consumed or []))


def check_beat(settings: Settings, app: Celery, timeout_s: float = PING_TIMEOUT_S) -> Check:
    """This host's `tagger beat`: the leader (it holds the Redis leader lock) answers a ping as
    beat@<host>; a standby is healthy while another beat leads. No leader at all is a failure."""
    host = socket.gethostname()
    try:
        holder = broker_client(settings.broker_url).get(lock_key(settings.queue))
    except redis.RedisError as exc:
        return Check(False, f"cannot read the beat leader lock: {exc}")
    if holder is None:
        return Check(False, "no beat holds the leader lock: none is running, or none could take it")
    token = holder.decode(errors="replace") if isinstance(holder, bytes) else str(holder)
    leader = token.split(":", 1)[0]  # the lock's token: host:pid:uuid
    if leader != host:
        return Check(True, f"standby: the beat on {leader} leads")
    node = f"beat@{host}"
    answered = ping_workers(app, settings.queue, timeout_s, node)
    return Check(bool(answered), f"leader; {node} {'answered' if answered else 'did not answer'} a ping within "
                 f"{timeout_s:g} s")


def check_health(settings: Settings, app: Celery, *, workers: bool = True, node: str | None = None,
                 beat: bool = False, timeout_s: float = PING_TIMEOUT_S) -> HealthReport:
    """``node``: this Celery node must answer (a worker's own healthcheck), instead of any worker of the
    queue; ``beat``: this host's beat, leader or standby (check_beat), instead of the workers."""
    report = HealthReport()
    report.checks["database"] = check_database(settings)
    report.checks["broker"] = broker = check_broker(settings)
    if beat:
        report.checks["beat"] = check_beat(settings, app, timeout_s) if broker.ok else Check(False, "broker down")
    elif workers:
        report.workers = ping_workers(app, settings.queue, timeout_s, node) if broker.ok else []
        who = node or f"workers of queue {settings.queue}"
        report.checks["workers"] = Check(bool(report.workers), f"{len(report.workers)} {who} answered a ping "
                                         f"within {timeout_s:g} s" + ("" if broker.ok else " (broker down)"))
    return report
