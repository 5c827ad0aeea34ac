import pytest

from tagger.errors import (
    BackendOutOfMemory,
    BackendTimeout,
    DatabaseUnavailable,
    MalformedOutput,
    RepoNotFound,
    UnusableReadme,
)
from workers.retry import INFRASTRUCTURE_MAX_ATTEMPTS, GiveUp, Retry, RetryPolicy, backoff, decide

POLICY = RetryPolicy(max_attempts=4, base_s=1.0, max_s=10.0)


@pytest.mark.parametrize("error", [RepoNotFound("x"), UnusableReadme("x")])
def test_permanent_errors_are_dead_lettered_at_once(error):
    assert isinstance(decide(1, error, POLICY), GiveUp)


@pytest.mark.parametrize("error", [BackendTimeout("t"), BackendOutOfMemory("m"), RuntimeError("bug")])
def test_transient_errors_retry_until_max_attempts(error):
    for attempt in range(1, POLICY.max_attempts):
        assert isinstance(decide(attempt, error, POLICY), Retry)
    assert isinstance(decide(POLICY.max_attempts, error, POLICY), GiveUp)


def test_malformed_output_retries_once_then_dead_letters():
    assert isinstance(decide(1, MalformedOutput("m"), POLICY), Retry)
    assert isinstance(decide(2, MalformedOutput("m"), POLICY), GiveUp)


def test_infrastructure_faults_outlast_the_repo_policy():
    assert isinstance(decide(POLICY.max_attempts + 5, DatabaseUnavailable("down"), POLICY), Retry)
    assert isinstance(decide(INFRASTRUCTURE_MAX_ATTEMPTS, DatabaseUnavailable("down"), POLICY), GiveUp)


def test_backoff_is_exponential_capped_and_jittered():
    assert [backoff(n, POLICY, lambda: 1.0) for n in (1, 2, 3, 4, 5, 9)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert [backoff(n, POLICY, lambda: 0.0) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]
    decision = decide(2, BackendTimeout("t"), POLICY, rand=lambda: 0.5)
    assert decision == Retry(1.5)
