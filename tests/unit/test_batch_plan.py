"""The batch plan: what happens to each repo of a batch, decided without a database or a model."""

from __future__ import annotations

from db.dead_letters import DeadLetter
from tagger.engine import Tagged
from tagger.errors import BackendTimeout, MalformedOutput, RepoNotFound, UnusableReadme
from tagger.taxonomy import Tag
from workers.batch import TaggingOutcome, plan_batch
from workers.retry import RetryPolicy

POLICY = RetryPolicy(max_attempts=3, base_s=1.0, max_s=8.0)


def no_jitter() -> float:
    return 0.0


def tagged(*names: str) -> Tagged:
    return Tagged([Tag(i, n) for i, n in enumerate(names)], "{}", 1.0, 10, 2)


def test_results_retries_and_dead_letters_each_get_their_repo():
    outcome = TaggingOutcome({
        "ok": tagged("cli"),
        "slow": BackendTimeout("slow"),
        "gone": RepoNotFound("gone"),
        "empty": UnusableReadme("empty"),
    })
    plan = plan_batch(outcome, {}, POLICY, no_jitter)
    assert plan.tagged == ["ok"]
    assert plan.retry_ids == ["slow"]
    assert plan.retries[0].attempts == 1 and plan.retries[0].delay_s == 0.5  # half the first 1 s, no jitter
    assert plan.retries[0].reason == "BackendTimeout: slow"
    assert plan.dead == ["empty", "gone"]  # permanent errors never retry
    assert not plan.split_retry


def test_attempts_so_far_count_towards_the_limit():
    outcome = TaggingOutcome({"a": BackendTimeout("t"), "b": BackendTimeout("t")})
    plan = plan_batch(outcome, {"a": 2, "b": 0}, POLICY, no_jitter)
    assert plan.dead_letters == [DeadLetter("a", "BackendTimeout", "t", 3)]
    assert plan.retry_ids == ["b"] and plan.retries[0].attempts == 1


def test_malformed_output_gets_one_more_model_call_only():
    first = plan_batch(TaggingOutcome({"r": MalformedOutput("x")}), {}, POLICY, no_jitter)
    second = plan_batch(TaggingOutcome({"r": MalformedOutput("x")}), {"r": 1}, POLICY, no_jitter)
    assert first.retry_ids == ["r"] and second.dead == ["r"]


def test_a_failure_of_the_whole_call_is_split_and_counts_against_nobody():
    error = BackendTimeout("the call timed out")
    outcome = TaggingOutcome({"a": error, "b": error, "c": error}, shared_failure=error)
    plan = plan_batch(outcome, {"a": 2, "b": 2, "c": 2}, POLICY, no_jitter)
    assert plan.split_retry
    assert plan.retry_ids == ["a", "b", "c"] and not plan.dead  # at the limit, yet not dead: not their fault
    assert {r.attempts for r in plan.retries} == {2}
    assert plan.retry_delay_s == 2.0  # backoff of the 3rd attempt, half of 4 s


def test_a_repo_failing_alone_takes_the_blame():
    shared = BackendTimeout("call")
    outcome = TaggingOutcome({"a": shared, "b": shared, "c": UnusableReadme("empty")}, shared_failure=shared)
    plan = plan_batch(outcome, {}, POLICY, no_jitter)
    assert plan.retry_ids == ["a", "b"] and plan.dead == ["c"]


def test_an_empty_batch_plans_nothing():
    plan = plan_batch(TaggingOutcome({}), {}, POLICY)
    assert (plan.tagged, plan.retry_ids, plan.dead, plan.retry_delay_s) == ([], [], [], 0.0)
