"""The retry-or-dead-letter decision: one small pure function, tested on its own."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from tagger.errors import BrokerUnavailable, DatabaseUnavailable, MalformedOutput, PermanentError
from tagger.settings import Settings

# Malformed model output already had one repair attempt (tagger.answer); it gets one more model
# call, then goes to the dead-letter table.
MALFORMED_MAX_ATTEMPTS = 2
# Infrastructure faults are nobody's README's fault: a message waits out an outage this many times
# before it is dropped, and then the sweeper still re-enqueues its repos from Postgres.
INFRASTRUCTURE_MAX_ATTEMPTS = 30


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 5
    base_s: float = 2.0
    max_s: float = 300.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(settings.max_attempts, settings.retry_base_s, settings.retry_max_s)


@dataclass(frozen=True, slots=True)
class Retry:
    delay_s: float


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Stop retrying: the repo goes to the dead-letter table (or, for a whole message, to the sweeper)."""

    reason: str


Decision = Retry | GiveUp


def backoff(attempts: int, policy: RetryPolicy, rand: Callable[[], float] = random.random) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random, so retries spread out."""
    ceiling = min(policy.max_s, policy.base_s * 2 ** max(attempts - 1, 0))
    return ceiling / 2 + ceiling / 2 * rand()


def decide(
    attempts: int, error: BaseException, policy: RetryPolicy, rand: Callable[[], float] = random.random
) -> Decision:
    """What to do after ``attempts`` failed attempts (this one included) ended in ``error``."""
    if isinstance(error, PermanentError):
        return GiveUp(f"permanent: {type(error).__name__}")
    if isinstance(error, (DatabaseUnavailable, BrokerUnavailable)):
        limit = INFRASTRUCTURE_MAX_ATTEMPTS
    elif isinstance(error, MalformedOutput):
        limit = min(MALFORMED_MAX_ATTEMPTS, policy.max_attempts)
    else:  # transient by kind, or unexpected: a few attempts before a person has to look
        limit = policy.max_attempts
    if attempts >= limit:
        return GiveUp(f"gave up after {attempts} attempts: {type(error).__name__}")
    return Retry(backoff(attempts, policy, rand))
