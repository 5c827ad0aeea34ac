"""Enqueueing: ids → Postgres job state 'queued' → one Celery message per batch.

Ids are read page by page (keyset pagination) and sent while the queue stays under its high-water
mark, so a million repos cost a bounded number of messages in Redis and a flat amount of memory.
Postgres is marked first, then the message is sent: a message that never arrives is found by the
sweeper, never lost.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from itertools import islice

import structlog
from kombu.exceptions import OperationalError as KombuOperationalError
from tqdm import tqdm

from db.configuration import Configuration
from db.engine import autocommit, get_engine, transaction, translate_errors
from db.jobs import mark_queued
from db.locks import advisory_lock, advisory_unlock, try_advisory_lock
from db.progress import mark_run_sent
from db.repos import Selection, count_repos, existing_repo_ids, page_repo_ids
from db.results import utcnow
from db.runs import add_run_enqueued, create_run
from db.taxonomy import current_taxonomy_version, load_taxonomy
from db.work import LIVE, Store, claim_stuck
from tagger.backends import configured_model
from tagger.engine import configured_prompt_version
from tagger.errors import BrokerUnavailable, InputError
from tagger.ids import validate_repo_id
from tagger.settings import Settings
from tagger.urls import scrub
from workers.contract import TAG_BATCH, canary_queue, create_app, queue_depth

log = structlog.get_logger("tagger.producer")

PAGE_SIZE = 5000
BACKPRESSURE_POLL_S = 0.5
# PostgreSQL advisory lock keys: one selection run (stale refresh, untagged) and one sweep at a time,
# whoever starts them (beat, a person, a second beat started by mistake).
SELECTION_LOCK = 0x7461_6767_6572_0001
SWEEP_LOCK = 0x7461_6767_6572_0002


@dataclass
class EnqueueReport:
    sent: int = 0
    batches: int = 0
    unknown: int = 0
    unknown_sample: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    duplicates: int = 0
    paused_s: float = 0.0
    elapsed_s: float = 0.0
    skipped: bool = False  # another run held the lock (wait=False)
    run_id: int | None = None  # the run recorded for this work (none when nothing was sent)


@dataclass(frozen=True, slots=True)
class RunSpec:
    """Who starts a run (a user name, "beat"...) and an optional label; recorded with the configuration
    and the selection when the first batch is sent, so an enqueue that finds nothing to do leaves no run."""

    started_by: str
    label: str | None = None


@contextmanager
def exclusive(database_url: str, key: int, *, wait: bool) -> Iterator[bool]:
    """Hold PostgreSQL advisory lock ``key`` for the block; yields False (without waiting) when another
    session holds it and ``wait`` is False. A session-level lock on its own connection, so it spans the
    many short transactions of a run; it dies with the connection if this process does."""
    with translate_errors(), get_engine(database_url).connect() as conn:
        held = try_advisory_lock(conn, key)
        if not held and wait:
            log.info("waiting_for_lock", key=key)
            advisory_lock(conn, key)
            held = True
        conn.commit()
        try:
            yield held
        finally:
            if held:
                advisory_unlock(conn, key)
                conn.commit()


def current_configuration(settings: Settings) -> Configuration:
    """The configuration a worker with these settings would record in its results."""
    with transaction(settings.database_url) as conn:
        taxonomy = load_taxonomy(conn)
        version = current_taxonomy_version(conn)
    return Configuration(settings.backend, configured_model(settings), configured_prompt_version(taxonomy, settings),
                         version)


def count_selection(settings: Settings, selection: Selection) -> int | None:
    if selection != "all":
        return None  # counting a join over the whole index costs as much as selecting it
    with transaction(settings.database_url) as conn:
        return count_repos(conn)


def iter_selection(settings: Settings, selection: Selection, page_size: int = PAGE_SIZE) -> Iterator[list[str]]:
    """Pages of ids in ``selection``, keyset-paginated: one short query per page, nothing held open."""
    current = current_configuration(settings) if selection == "stale" else None
    after: str | None = None
    while True:
        with transaction(settings.database_url) as conn:
            page = page_repo_ids(conn, selection, after=after, limit=page_size, current=current)
        if not page:
            return
        yield page
        after = page[-1]


def record_run(settings: Settings, spec: RunSpec, selection: str, kind: str = "live") -> int:
    """A new run of ``settings``' configuration; its id."""
    configuration = current_configuration(settings)
    with transaction(settings.database_url) as conn:
        run_id = create_run(conn, kind=kind, started_by=spec.started_by, label=spec.label, selection=selection,
                            configuration=configuration)
    log.info("run_started", run_id=run_id, kind=kind, started_by=spec.started_by, label=spec.label,
             selection=selection, **configuration.as_dict())
    return run_id


class Sender:
    """Sends batches over one broker connection, pausing while the queue is above its high-water mark.

    Each message carries the id of its run: ``run_id`` (an existing run: a canary), or one recorded from
    ``run`` at the first send. ``shadow``: a canary's batches, whose state lives in its shadow results,
    never in the live job states."""

    def __init__(self, settings: Settings, on_pause: Callable[[int], None] | None = None, *,
                 run: RunSpec | None = None, selection: str = "", run_id: int | None = None,
                 shadow: bool = False, owns_run: bool = False) -> None:
        self.settings = settings
        self.app = create_app(settings)
        self.on_pause = on_pause
        self.report = EnqueueReport(run_id=run_id)
        self.run = run
        self.selection = selection
        self.shadow = shadow
        self._since_check: int | None = None  # None: check before the first message
        # Whether this sender's batches are its run's whole sending, which close() ends: a run it records,
        # or a canary's sample; not a sweeper re-sending repos of older runs.
        self.owns_run = owns_run or run is not None

    def close(self) -> None:
        """The sending is over (done, or interrupted): the run is no longer "sending"."""
        if self.owns_run and self.report.run_id is not None:
            with transaction(self.settings.database_url) as conn:
                mark_run_sent(conn, self.report.run_id)

    @property
    def check_every(self) -> int:
        """Messages sent between two depth checks. Checking each one costs a round trip; a quarter of
        the mark keeps the bound tight: one producer never leaves more than ``high_water - 1 +
        check_every`` batches waiting."""
        return max(1, self.settings.queue_high_water // 4)

    def _wait_for_room(self) -> None:
        high = self.settings.queue_high_water
        if self._since_check is not None and self._since_check < self.check_every:
            self._since_check += 1
            return
        self._since_check = 1  # this message is the first of the next interval
        depth = queue_depth(self.settings.broker_url, self.settings.queue)
        if depth < high:
            return
        started = time.monotonic()
        log.info("enqueue_paused", queue_depth=depth, high_water=high)
        if self.on_pause:
            self.on_pause(depth)
        resume = max(1, high // 2)  # resume at half the mark so we don't flap around it
        while depth >= resume:
            time.sleep(BACKPRESSURE_POLL_S)
            depth = queue_depth(self.settings.broker_url, self.settings.queue)
        self.report.paused_s += time.monotonic() - started
        log.info("enqueue_resumed", queue_depth=depth, paused_s=round(time.monotonic() - started, 2))

    def send(self, ids: Sequence[str], *, reset_attempts: bool = True, run_id: int | None = None) -> None:
        """Send ``ids`` in batches, under ``run_id`` if given (the sweeper: each repo's own run)."""
        for start in range(0, len(ids), self.settings.batch_size):
            batch = list(ids[start : start + self.settings.batch_size])
            # The broker is asked first (queue depth): with Redis down, no run is recorded and nothing is
            # marked queued, rather than a run that claims repos it never sent.
            self._wait_for_room()
            if run_id is None and self.report.run_id is None and self.run is not None:
                self.report.run_id = record_run(self.settings, self.run, self.selection)
            run_id = run_id if run_id is not None else self.report.run_id
            counted = run_id is not None and reset_attempts
            # One statement, so no transaction: the jobs and the run's count are written together or not.
            with autocommit(self.settings.database_url) as conn:
                if not self.shadow:
                    mark_queued(conn, batch, reset_attempts=reset_attempts, run_id=run_id, count_for_run=counted)
                elif run_id is not None and reset_attempts:
                    add_run_enqueued(conn, run_id, len(batch))
            try:
                self.app.send_task(TAG_BATCH, (batch, run_id), queue=self.settings.queue, retry=True,
                                   retry_policy={"max_retries": 3, "interval_start": 0.5})
            except KombuOperationalError as exc:
                raise BrokerUnavailable(f"cannot reach the broker: {scrub(str(exc), self.settings.broker_url)}") \
                    from exc
            self.report.sent += len(batch)
            self.report.batches += 1


def _progress(total: int | None, enabled: bool) -> tqdm:
    # disable=None: a bar on a terminal, silence in logs and pipes. Repos sent, not tagged: `tagger status
    # --watch` shows those.
    return tqdm(total=total, unit="repo", unit_scale=True, dynamic_ncols=True, disable=None if enabled else True,
                desc="sent")


UNKNOWN_USER = RunSpec("unknown")


def enqueue_selection(
    settings: Settings, selection: Selection, *, progress: bool = False, wait: bool = True,
    run: RunSpec = UNKNOWN_USER,
) -> EnqueueReport:
    """Enqueue every repo in ``selection``, as one run (``run``: who started it). Runs of 'stale' and
    'untagged' are serialized by an advisory lock, so two of them (two beats, beat and a person) never
    send the same repo twice; with ``wait=False`` a run that finds the lock taken does nothing
    (``report.skipped``)."""
    if selection == "all":
        return _enqueue_selection(settings, selection, progress, run)
    with exclusive(settings.database_url, SELECTION_LOCK, wait=wait) as held:
        if not held:
            log.info("enqueue_skipped", selection=selection, reason="another run holds the lock")
            return EnqueueReport(skipped=True)
        return _enqueue_selection(settings, selection, progress, run)


def _enqueue_selection(settings: Settings, selection: Selection, progress: bool, run: RunSpec) -> EnqueueReport:
    started = time.monotonic()
    total = count_selection(settings, selection) if progress else None
    sender = Sender(settings, run=run, selection=selection)
    with _progress(total, progress) as bar, contextlib.closing(sender):
        sender.on_pause = lambda depth: bar.set_postfix_str(f"queue full ({depth} batches), waiting")
        for page in iter_selection(settings, selection):
            sender.send(page)
            bar.update(len(page))
            bar.set_postfix_str("")
    sender.report.elapsed_s = time.monotonic() - started
    log.info("enqueued", selection=selection, repos=sender.report.sent, batches=sender.report.batches,
             run_id=sender.report.run_id)
    return sender.report


def enqueue_ids(settings: Settings, raw_ids: Iterable[object], *, progress: bool = False,
                run: RunSpec = UNKNOWN_USER) -> EnqueueReport:
    """Enqueue explicit ids (``--ids``, ``--file``) as one run: validated, deduplicated, unknown ids reported."""
    started = time.monotonic()
    sender = Sender(settings, run=run, selection="ids")
    report = sender.report
    seen_in_chunk: set[str]
    iterator = iter(raw_ids)
    with _progress(None, progress) as bar, contextlib.closing(sender):
        while chunk := list(islice(iterator, PAGE_SIZE)):
            valid: list[str] = []
            seen_in_chunk = set()
            for raw in chunk:
                try:
                    repo_id = validate_repo_id(raw)
                except InputError as exc:
                    report.invalid.append(str(exc))
                    continue
                if repo_id in seen_in_chunk:
                    report.duplicates += 1
                    continue
                seen_in_chunk.add(repo_id)
                valid.append(repo_id)
            if not valid:
                continue
            with transaction(settings.database_url) as conn:
                known = existing_repo_ids(conn, valid)
            unknown = [i for i in valid if i not in known]
            report.unknown += len(unknown)
            report.unknown_sample.extend(unknown[: max(0, 10 - len(report.unknown_sample))])
            sender.send([i for i in valid if i in known])
            bar.update(len(chunk))
    report.elapsed_s = time.monotonic() - started
    log.info("enqueued", selection="ids", repos=report.sent, batches=report.batches, unknown=report.unknown,
             invalid=len(report.invalid), duplicates=report.duplicates, run_id=report.run_id)
    return report


def canary_settings(settings: Settings, run_id: int) -> Settings:
    """The settings a canary's producer and workers use: the canary's own queue."""
    return settings.model_copy(update={"queue": canary_queue(settings.queue, run_id)})


def sweep_stuck(settings: Settings, older_than_s: float | None = None, *, wait: bool = True,
                store: Store = LIVE) -> int:
    """Re-send the repos of ``store`` (live, or a canary's) queued longer than the bound without a result
    (messages lost in Redis), each under the run that sent it.

    claim_stuck already keeps two sweeps from claiming the same repo; the lock keeps a second one from
    even starting while the first waits on backpressure. Beat sweeps live work only: a canary nobody
    serves any more must not fill its queue forever (its sweep is run by hand)."""
    with exclusive(settings.database_url, SWEEP_LOCK, wait=wait) as held:
        if not held:
            log.info("sweep_skipped", reason="another sweep holds the lock")
            return 0
        return _sweep_stuck(settings, older_than_s, store)


def _sweep_stuck(settings: Settings, older_than_s: float | None, store: Store) -> int:
    older_than = settings.sweep_older_than_s if older_than_s is None else older_than_s
    due_before = utcnow() - timedelta(seconds=older_than)
    if store.canary_run is not None:
        sender = Sender(canary_settings(settings, store.canary_run), run_id=store.canary_run, shadow=True)
    else:
        sender = Sender(settings)
    swept = 0
    while True:
        with transaction(settings.database_url) as conn:
            by_run = claim_stuck(conn, store, due_before, PAGE_SIZE)
        if not by_run:
            break
        claimed = 0
        for run_id, group in sorted(by_run.items(), key=lambda item: item[0] or 0):
            sender.send(group, reset_attempts=False, run_id=run_id)
            claimed += len(group)
        swept += claimed
        if claimed < PAGE_SIZE:
            break
    if swept:
        log.warning("swept", repos=swept, older_than_s=older_than, run_id=store.canary_run)
    return swept
