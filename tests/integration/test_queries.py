"""The hot path's writes (one unnest statement per batch): results never go back to an older README, job
states move as the worker says."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from db.engine import get_engine, transaction
from db.jobs import mark_done, mark_queued, schedule_retries
from db.models import jobs, result_history, results
from db.repos import upsert_repos
from db.results import upsert_results, utcnow
from db.work import LIVE, claim_stuck
from tests.support.processes import wait_until


@pytest.fixture
def url(database_url: str) -> str:
    return database_url


def _result(repo_id: str, tag_ids: list[int], readme_version: int, model: str = "m1") -> dict[str, object]:
    return {"repo_id": repo_id, "tag_ids": tag_ids, "backend": "keyword", "model": model, "prompt_version": "p1",
            "taxonomy_version": 1, "readme_hash": f"h{readme_version}", "readme_version": readme_version,
            "raw_output": '{"tags": []}', "latency_ms": 1.5}


def _stored(url: str) -> dict[str, tuple[list[int], int, str]]:
    with transaction(url) as conn:
        rows = conn.execute(sa.select(results.c.repo_id, results.c.tag_ids, results.c.readme_version,
                                      results.c.model))
        return {repo_id: (tag_ids, version, model) for repo_id, tag_ids, version, model in rows}


def _jobs(url: str) -> dict[str, tuple[str, int, str | None]]:
    with transaction(url) as conn:
        rows = conn.execute(sa.select(jobs.c.repo_id, jobs.c.state, jobs.c.attempts, jobs.c.task_id))
        return {repo_id: (state, attempts, task_id) for repo_id, state, attempts, task_id in rows}


def test_results_are_upserted_and_never_go_back_to_an_older_readme(url):
    with transaction(url) as conn:
        upsert_repos(conn, [{"id": i, "name": i, "readme": f"# {i}"} for i in ("a", "b", "c")])
        upsert_results(conn, [_result("b", [4, 17], 2), _result("a", [], 1), _result("c", [9], 1)])
    assert _stored(url) == {"a": ([], 1, "m1"), "b": ([4, 17], 2, "m1"), "c": ([9], 1, "m1")}

    with transaction(url) as conn:
        upsert_results(conn, [
            _result("a", [5], 1, model="m2"),  # same README: the newer tagging replaces it
            _result("b", [1], 1, model="m2"),  # computed from an older README: ignored
            _result("c", [2, 3, 4], 3, model="m2"),  # from a newer README: replaces it
        ])
    assert _stored(url) == {"a": ([5], 1, "m2"), "b": ([4, 17], 2, "m1"), "c": ([2, 3, 4], 3, "m2")}


def test_job_states_follow_queue_retry_and_done(url):
    with transaction(url) as conn:
        upsert_repos(conn, [{"id": i, "name": i, "readme": f"# {i}"} for i in ("a", "b", "c")])
        mark_queued(conn, ["b", "a", "b"])
    assert _jobs(url) == {"a": ("queued", 0, None), "b": ("queued", 0, None)}

    with transaction(url) as conn:
        schedule_retries(conn, [("a", 2, 0.0, "BackendTimeout: slow")], "t-1")
        mark_done(conn, ["c", "b"], "t-1")
    assert _jobs(url) == {"a": ("failed", 2, "t-1"), "b": ("done", 0, "t-1"), "c": ("done", 0, "t-1")}

    with transaction(url) as conn:
        mark_queued(conn, ["a"], reset_attempts=False)  # the sweeper re-sends a retry: attempts carry on
    assert _jobs(url)["a"] == ("queued", 2, "t-1")
    with transaction(url) as conn:
        mark_queued(conn, ["a"])  # a new enqueue starts over
        mark_done(conn, ["a"], "t-2")
    assert _jobs(url)["a"] == ("done", 0, "t-2")


def test_a_sweep_claims_each_stuck_repo_once_page_after_page(url):
    """Pages claimed with the bound the sweep fixed when it started: the repos it re-stamped are not due
    again, even with no age bound at all (`tagger sweep --older-than 0`), so the sweep ends."""
    ids = ["a", "b", "c", "d", "e"]
    with transaction(url) as conn:
        upsert_repos(conn, [{"id": i, "name": i, "readme": f"# {i}"} for i in ids])
        mark_queued(conn, ids)
    due_before = utcnow()
    pages = []
    while True:
        with transaction(url) as conn:
            page = claim_stuck(conn, LIVE, due_before, limit=2)
        if not page:
            break
        pages.append(sorted(repo for group in page.values() for repo in group))
    assert pages == [["a", "b"], ["c", "d"], ["e"]]
    with transaction(url) as conn:  # a later sweep finds them all due again
        assert sorted(claim_stuck(conn, LIVE, utcnow(), limit=10)[None]) == ids


def test_confidences_are_stored_and_the_least_confident_come_first(url):
    from db.results import iter_scored_results, least_confident_results

    with transaction(url) as conn:
        upsert_repos(conn, [{"id": i, "name": f"o/{i}", "readme": f"# {i}"} for i in ("a", "b", "c", "d")])
        upsert_results(conn, [
            {**_result("a", [4, 17], 1), "tag_scores": [0.9, 0.3], "confidence": 0.9},
            {**_result("b", [9], 1), "tag_scores": [0.2], "confidence": 0.2},
            _result("c", [5], 1),  # an unscored backend: no confidence
            {**_result("d", [1, 2, 3], 1), "tag_scores": [0.5, 0.4, 0.35], "confidence": 0.5},
        ])
    with transaction(url) as conn:
        scored = {repo_id: (tag_ids, scores) for repo_id, tag_ids, scores in iter_scored_results(conn, page=2)}
        review = least_confident_results(conn, 2)
    assert scored == {"a": ([4, 17], [0.9, 0.3]), "b": ([9], [0.2]), "c": ([5], None),
                      "d": ([1, 2, 3], [0.5, 0.4, 0.35])}
    assert [(r.repo_id, r.name, r.confidence) for r in review] == [("b", "o/b", 0.2), ("d", "o/d", 0.5)]

    with transaction(url) as conn:  # a re-tag under an unscored backend clears the scores
        upsert_results(conn, [_result("a", [4], 1)])
        assert [r.repo_id for r in least_confident_results(conn, 10)] == ["b", "d"]


def _history(url: str) -> list[tuple[str, list[int], str]]:
    with transaction(url) as conn:
        rows = conn.execute(sa.select(result_history.c.repo_id, result_history.c.tag_ids, result_history.c.model)
                            .order_by(result_history.c.id))
        return [(repo_id, tag_ids, model) for repo_id, tag_ids, model in rows]


def test_a_result_another_writer_inserts_meanwhile_is_archived_not_replaced_unseen(url):
    with transaction(url) as conn:
        upsert_repos(conn, [{"id": i, "name": i, "readme": f"# {i}"} for i in ("a", "b")])
        upsert_results(conn, [_result("a", [1], 1)])
    first = get_engine(url).connect()
    first_tx = first.begin()
    upsert_results(first, [_result("b", [2], 1, model="first")])  # b's first result, not committed yet
    second_done = threading.Event()

    def second_writer() -> None:
        with transaction(url) as conn:
            upsert_results(conn, [_result("a", [3], 1, model="second"), _result("b", [4], 1, model="second")])
        second_done.set()

    second = threading.Thread(target=second_writer)
    second.start()

    def second_waits() -> bool:  # on the first one's transaction: its insert of b, not committed yet
        with transaction(url) as conn:
            return bool(conn.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND wait_event = 'transactionid'")).scalar())

    wait_until(second_waits, timeout=20, what="the second writer waiting on the first one's insert")
    first_tx.commit()
    first.close()
    second.join(timeout=30)
    assert second_done.is_set()
    assert {k: v[0] for k, v in _stored(url).items()} == {"a": [3], "b": [4]}
    assert _history(url) == [("a", [1], "m1"), ("b", [2], "first")]  # both replaced versions kept
