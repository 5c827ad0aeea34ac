"""Honest progress: each run's pace measured on its own progress, from its start to now (or to its last
result once it has nothing left to do), so the rate is right from the first seconds and does not decay
after the end; the ETA is what is left at that pace. And a live view of it, one bar per run."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TextIO

from tqdm import tqdm

from db.engine import transaction
from db.progress import RunProgress, recent_run_ids, runs_progress
from tagger.settings import Settings


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)  # naive: UTC, as stored


def with_true_counts(counts: Mapping[str, int], progress: RunProgress) -> dict[str, int]:
    """A run's counts with those that stay true after later runs: repos it tagged (its results live or
    replaced since), still pending under it, dead-lettered under it (a live run's job states, "queued",
    "done"..., count only its repos that no later run has enqueued since)."""
    return dict(counts) | {"tagged": progress.tagged, "pending": progress.pending, "dead": progress.dead}


def run_state(run: RunProgress) -> str:
    """sending while its producer sends; then running while repos of the run wait (none tagged yet:
    queued), done once none do; promoted and rolled back say what was done with it since."""
    if run.rolled_back_at is not None:
        return "rolled back"
    if run.promoted_at is not None:
        return "promoted"
    if run.sent_at is None:
        return "sending"
    if run.pending:
        return "running" if run.tagged else "queued"
    return "done"


@dataclass(frozen=True, slots=True)
class Pace:
    rate_per_s: float | None  # repos tagged per second since the run started; None before its first result
    eta_s: float | None  # seconds left at that pace; 0 when nothing is left; None when unknown
    elapsed_s: float


def pace(run: RunProgress, now: datetime) -> Pace:
    started = _aware(run.started_at)
    # A finished run's clock stops at its last result: its rate stays what it was.
    end = now if run.pending or run.last_tagged_at is None else _aware(run.last_tagged_at)
    elapsed = max(0.0, (end - started).total_seconds())
    if not run.tagged or elapsed <= 0:
        return Pace(None, None if run.pending else 0.0, elapsed)
    rate = run.tagged / elapsed
    return Pace(rate, run.pending / rate, elapsed)


def overall_pace(active: Sequence[RunProgress], now: datetime) -> tuple[float | None, float | None]:
    """The pipeline's rate (the sum of its running runs' paces) and the ETA of everything they left."""
    paces = [pace(run, now) for run in active if run.pending]
    rates = [p.rate_per_s for p in paces if p.rate_per_s]
    if not paces:
        return None, 0.0
    if not rates:
        return None, None
    total = sum(rates)
    return total, sum(run.pending for run in active if run.pending) / total


def read_progress(settings: Settings, run_ids: Sequence[int] | None = None, limit: int = 5) -> list[RunProgress]:
    with transaction(settings.database_url) as conn:
        return runs_progress(conn, list(run_ids) if run_ids is not None else recent_run_ids(conn, limit))


class _AboveBars:
    """A standard error whose log lines tqdm writes above its bars (instead of through them)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        # A log line is one write ending in a newline (tagger.logs); a bar's redraw starts with a carriage
        # return, and its last newline comes alone: those go through as they are.
        if text.endswith("\n") and text.strip() and not text.startswith("\r"):
            tqdm.write(text.rstrip("\n"), file=self.stream)
        else:
            self.stream.write(text)
        return len(text)

    def fileno(self) -> int:
        return self.stream.fileno()

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()


@contextlib.contextmanager
def logs_above_bars() -> Iterator[TextIO]:
    """While progress bars are drawn: log lines (which go to whatever sys.stderr is, tagger.logs) are
    printed above the bars; yields the real standard error, where the bars go."""
    real = sys.stderr
    with contextlib.redirect_stderr(_AboveBars(real)):
        yield real


BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} tagged{postfix}"


def watch(settings: Settings, run_ids: Sequence[int] | None, *, interval_s: float = 1.0,
          until_done: bool = True, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> list[RunProgress]:
    """One live bar per run (repos tagged out of repos sent), redrawn every ``interval_s`` until every
    run shown has nothing left (or forever, without ``until_done``). tqdm writes to standard error; our
    log lines go through tqdm.write meanwhile (tagger.logs), so they do not break the bars."""
    bars: dict[int, tqdm] = {}
    with contextlib.ExitStack() as stack:
        stderr = stack.enter_context(logs_above_bars())
        stack.callback(lambda: [bar.close() for bar in bars.values()])
        while True:
            progress = read_progress(settings, run_ids)
            for position, run in enumerate(progress):
                bar = bars.get(run.run_id)
                if bar is None:
                    bar = bars[run.run_id] = tqdm(total=run.enqueued, unit="repo", position=position, file=stderr,
                                                  dynamic_ncols=True, desc=f"run {run.run_id} ({run.kind})",
                                                  bar_format=BAR_FORMAT, leave=True)
                bar.total = max(run.enqueued, run.tagged)
                bar.n = run.tagged
                step = pace(run, now())
                bar.set_postfix_str(
                    f"{run_state(run)}, {step.rate_per_s:.1f}/s" if step.rate_per_s else run_state(run), refresh=False)
                bar.refresh()
            if until_done and all(not run.pending for run in progress):
                return progress
            time.sleep(interval_s)
