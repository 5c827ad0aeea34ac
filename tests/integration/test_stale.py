"""`tagger enqueue --stale`: exactly the repos that need work, once, however many refreshes run."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from db.dead_letters import DeadLetter, record_dead_letters
from db.engine import transaction
from db.jobs import mark_done, mark_queued
from db.repos import upsert_repos
from db.results import upsert_results
from producer.enqueue import SELECTION_LOCK, current_configuration, enqueue_selection, exclusive
from tagger.backends import configured_model, create_tagger
from tests.support.processes import run_cli
from tests.support.queues import queued_ids


def _repos(ids: list[str], readme: str = "A command-line tool written in Rust.") -> list[dict[str, str]]:
    return [{"id": i, "name": f"owner/{i}", "readme": f"# {i}\n\n{readme}\n"} for i in ids]


def _tag(database_url: str, repo_id: str, **config: object) -> None:
    """Store a result for ``repo_id`` computed from its current README, as a worker would."""
    with transaction(database_url) as conn:
        from db.repos import fetch_readmes

        row = fetch_readmes(conn, [repo_id])[repo_id]
        upsert_results(conn, [{
            "repo_id": repo_id, "tag_ids": [4], **config, "readme_hash": row.readme_hash,
            "readme_version": row.readme_version, "raw_output": "{}", "latency_ms": 1.0,
        }])
        mark_done(conn, [repo_id], "t-1")


def test_stale_selects_exactly_the_repos_that_need_work(settings, env):
    current = current_configuration(settings).as_dict()
    cases = {
        "never-tagged": True,
        "up-to-date": False,
        "readme-changed": True,
        "other-model": True,
        "other-prompt": True,
        "other-taxonomy": True,
        "other-backend": True,
        "in-flight": False,  # queued, its message on its way: the refresh must not send it again
        "retrying": False,  # failed, a retry planned
        "dead": False,  # dead letters come back by `tagger dlq requeue`...
        "dead-readme-changed": True,  # ...or when their README changes
    }
    with transaction(settings.database_url) as conn:
        upsert_repos(conn, _repos(sorted(cases)))
    _tag(settings.database_url, "up-to-date", **current)
    _tag(settings.database_url, "readme-changed", **current)
    _tag(settings.database_url, "other-model", **(current | {"model": "some-older-model"}))
    _tag(settings.database_url, "other-prompt", **(current | {"prompt_version": "p-old"}))
    older_taxonomy = int(str(current["taxonomy_version"])) - 1
    _tag(settings.database_url, "other-taxonomy", **(current | {"taxonomy_version": older_taxonomy}))
    _tag(settings.database_url, "other-backend", **(current | {"backend": "openai"}))
    with transaction(settings.database_url) as conn:
        mark_queued(conn, ["in-flight", "retrying"])
        from db.jobs import schedule_retries

        schedule_retries(conn, [("retrying", 1, 60.0, "BackendTimeout: slow")], "t-2")
        record_dead_letters(conn, [DeadLetter(r, "UnusableReadme", "empty", 1)
                                   for r in ("dead", "dead-readme-changed")], "t-3")
    # README updates, in a later transaction than the results and the dead letters.
    with transaction(settings.database_url) as conn:
        upsert_repos(conn, _repos(["readme-changed", "dead-readme-changed"], readme="Now a web framework."))

    result = run_cli(env, "enqueue", "--stale")
    expected = sorted(name for name, stale in cases.items() if stale)
    assert f"enqueued {len(expected)} repos" in result.stdout
    assert sorted(queued_ids(settings.queue)) == expected

    # Right after, the same refresh finds nothing: what it sent is in flight.
    again = run_cli(env, "enqueue", "--stale")
    assert "enqueued 0 repos" in again.stdout
    assert len(queued_ids(settings.queue)) == len(expected)


def test_the_default_backends_record_the_model_the_producer_expects(settings):
    """A result is up to date only if the model it records is the one `--stale` compares with."""
    for backend in ("keyword", "llamacpp"):
        if backend == "llamacpp":
            pytest.importorskip("llama_cpp")
        configured = settings.model_copy(update={"backend": backend})
        tagger = create_tagger(configured)
        try:
            assert tagger.model == configured_model(configured), backend
        finally:
            tagger.close()


def test_concurrent_refreshes_enqueue_each_stale_repo_once(settings):
    ids = [f"r{n:05d}" for n in range(2000)]
    with transaction(settings.database_url) as conn:
        upsert_repos(conn, _repos(ids))
    fast = settings.model_copy(update={"batch_size": 10, "queue_high_water": 10_000})
    barrier = threading.Barrier(4)
    reports = []

    def refresh(wait: bool) -> None:
        barrier.wait()
        reports.append(enqueue_selection(fast, "stale", wait=wait))

    threads = [threading.Thread(target=refresh, args=(wait,)) for wait in (False, False, True, True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(reports) == 4
    counts = Counter(queued_ids(settings.queue))
    assert sorted(counts) == ids
    assert set(counts.values()) == {1}
    assert sum(r.sent for r in reports) == 2000


def test_a_refresh_that_finds_the_lock_taken_does_nothing(settings):
    with transaction(settings.database_url) as conn:
        upsert_repos(conn, _repos(["a", "b"]))
    with exclusive(settings.database_url, SELECTION_LOCK, wait=False) as held:
        assert held
        report = enqueue_selection(settings, "stale", wait=False)
    assert report.skipped and report.sent == 0
    assert queued_ids(settings.queue) == []
    assert enqueue_selection(settings, "stale", wait=False).sent == 2
