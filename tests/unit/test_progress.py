"""A run's pace from its own progress: right from the first seconds, frozen once it is done."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from db.progress import RunProgress
from producer.progress import overall_pace, pace, run_state

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def run(tagged: int, pending: int, *, last_s: float | None = None, run_id: int = 1, **marks: datetime) -> RunProgress:
    last = START + timedelta(seconds=last_s) if last_s is not None else None
    return RunProgress(run_id, "live", START, tagged + pending, tagged, pending, 0, START if tagged else None, last,
                       marks.get("promoted_at"), marks.get("rolled_back_at"), marks.get("sent_at", START))


def test_a_steady_rate_reads_right_from_the_first_seconds():
    # 24.7 repos/s from the start: 3 s in, 74 tagged; a minute in, 1482.
    for seconds in (3, 10, 60):
        tagged = round(24.7 * seconds)
        step = pace(run(tagged, 2000 - tagged, last_s=seconds), START + timedelta(seconds=seconds))
        assert step.rate_per_s == pytest.approx(24.7, rel=0.02)
        assert step.eta_s == pytest.approx((2000 - tagged) / 24.7, rel=0.02)


def test_a_finished_run_keeps_its_pace():
    done = run(2000, 0, last_s=80)
    for later in (80, 200, 86_400):
        step = pace(done, START + timedelta(seconds=later))
        assert step.rate_per_s == pytest.approx(25.0) and step.eta_s == 0


def test_nothing_tagged_yet_has_no_rate_and_an_unknown_eta():
    step = pace(run(0, 500), START + timedelta(seconds=5))
    assert step.rate_per_s is None and step.eta_s is None


def test_overall_pace_adds_the_running_runs():
    now = START + timedelta(seconds=10)
    rate, eta = overall_pace([run(100, 100, last_s=10), run(50, 50, last_s=10, run_id=2)], now)
    assert rate == pytest.approx(15.0) and eta == pytest.approx(150 / 15)
    assert overall_pace([run(10, 0, last_s=1)], now) == (None, 0.0)


def test_states():
    assert run_state(run(3, 10, last_s=1, sent_at=None)) == "sending"
    assert run_state(run(0, 10)) == "queued"
    assert run_state(run(5, 5, last_s=1)) == "running"
    assert run_state(run(10, 0, last_s=1)) == "done"
    assert run_state(run(10, 0, last_s=1, promoted_at=START)) == "promoted"
    assert run_state(run(10, 0, last_s=1, rolled_back_at=START)) == "rolled back"
