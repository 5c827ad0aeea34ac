"""The dates and times every command's options accept (export --changed-since, history prune --before,
dlq purge --before): one list, naive ones read as UTC, an offset kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import click
import pytest

from cli.base import DATE_FORMATS, as_utc


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-12-01", datetime(2026, 12, 1, tzinfo=UTC)),
    ("2026-12-01T10:11:12", datetime(2026, 12, 1, 10, 11, 12, tzinfo=UTC)),
    ("2026-12-01 10:11:12", datetime(2026, 12, 1, 10, 11, 12, tzinfo=UTC)),
    ("2026-12-01T10:11:12.250000", datetime(2026, 12, 1, 10, 11, 12, 250000, tzinfo=UTC)),
    ("2026-12-01T10:11:12+02:00", datetime(2026, 12, 1, 8, 11, 12, tzinfo=UTC)),
    ("2026-12-01T10:11:12.5+0000", datetime(2026, 12, 1, 10, 11, 12, 500000, tzinfo=UTC)),
])
def test_a_date_or_time_is_read_naive_as_utc_and_an_offset_kept(text: str, expected: datetime) -> None:
    assert as_utc(click.DateTime(DATE_FORMATS).convert(text, None, None)) == expected


def test_an_aware_time_is_not_shifted() -> None:
    moment = datetime(2026, 12, 1, 10, tzinfo=timezone(timedelta(hours=-5)))
    assert as_utc(moment) is moment


def test_a_malformed_time_is_refused() -> None:
    with pytest.raises(click.BadParameter):
        click.DateTime(DATE_FORMATS).convert("01/12/2026", None, None)
