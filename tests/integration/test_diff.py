"""A canary's diff against live, counted by the server in one statement (db.canary.diff_shadow_against_live),
held to the same answers a plain Python comparison of the same rows gives."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from db.canary import diff_shadow_against_live, insert_shadow_queued, iter_shadow_against_live, write_shadow_results
from db.configuration import Configuration
from db.engine import transaction
from db.repos import upsert_repos
from db.results import upsert_results
from db.runs import create_run

CONFIGURATION = Configuration("keyword", "keyword-v2", "p1", 1)


def _result(repo_id: str, tag_ids: list[int], backend: str = "keyword") -> dict[str, object]:
    return {"repo_id": repo_id, "tag_ids": tag_ids, "backend": backend, "model": "m", "prompt_version": "p1",
            "taxonomy_version": 1, "readme_hash": "h", "readme_version": 1, "raw_output": "{}", "latency_ms": 1.0}


def _canary(url: str, live: dict[str, list[int] | None], shadow: dict[str, tuple[str, list[int] | None]],
            pinned: frozenset[str] = frozenset()) -> int:
    """Repos with ``live`` tags (None: untagged; ``pinned``: set by hand) and a canary whose sample is
    ``shadow``: repo -> (state, its tags when done)."""
    with transaction(url) as conn:
        upsert_repos(conn, [{"id": i, "name": f"owner/{i}", "readme": f"# {i}"} for i in sorted(live)])
        upsert_results(conn, [_result(i, tags, "manual" if i in pinned else "keyword")
                              for i, tags in live.items() if tags is not None])
        run_id = create_run(conn, kind="canary", started_by="test", label=None, selection="sample",
                            configuration=CONFIGURATION)
        insert_shadow_queued(conn, run_id, list(shadow))
        write_shadow_results(conn, run_id, [
            _result(i, tags or []) | {"state": "done"} if state == "done"
            else {"repo_id": i, "state": state, "attempts": 1, "error": "x"}
            for i, (state, tags) in shadow.items() if state != "queued"])
    return run_id


def test_diff_counts_the_sample_and_the_changes_and_orders_the_biggest_first(database_url):
    run_id = _canary(database_url, live={
        "x": [1, 2], "y": [1], "z": None, "w": [1, 2, 3], "p": [4], "q": [1], "d": [1], "v": [5],
    }, shadow={
        "x": ("done", [2, 1]),  # the same tags in another order: unchanged
        "y": ("done", [3]),  # one swapped: 2 changes
        "z": ("done", [1, 2, 3]),  # untagged live: 3 added
        "w": ("done", [4]),  # 4 changes
        "p": ("done", [1]),  # pinned live: compared, and counted as pinned
        "v": ("done", [6]),  # 2 changes, as y: after y in id order
        "q": ("failed", None), "d": ("dead", None),
    }, pinned=frozenset({"p"}))
    with transaction(database_url) as conn:
        diff = diff_shadow_against_live(conn, run_id, top=4)
        none_shown = diff_shadow_against_live(conn, run_id, top=0)
    assert (diff.sample, diff.done, diff.pending, diff.dead, diff.changed, diff.unchanged, diff.pinned) == \
        (8, 6, 1, 1, 5, 1, 1)
    assert diff.added == {1: 2, 2: 1, 3: 2, 4: 1, 6: 1}
    assert diff.removed == {1: 2, 2: 1, 3: 1, 4: 1, 5: 1}
    assert diff.changed_most == [("w", [1, 2, 3], [4], 4), ("z", [], [1, 2, 3], 3), ("p", [4], [1], 2),
                                 ("v", [5], [6], 2)]
    assert none_shown.changed_most == [] and none_shown.changed == 5


def test_a_canary_with_nothing_tagged_yet_diffs_to_zeros(database_url):
    run_id = _canary(database_url, live={"a": [1]}, shadow={"a": ("queued", None)})
    with transaction(database_url) as conn:
        diff = diff_shadow_against_live(conn, run_id, top=3)
    assert (diff.sample, diff.done, diff.pending, diff.changed, diff.added, diff.changed_most) == (1, 0, 1, 0, {}, [])


def test_diff_agrees_with_a_plain_comparison_of_every_row(database_url):
    rng = random.Random(3)
    ids = [f"r{i:05d}" for i in range(3000)] + ["R00001", "_x"]  # ordered apart by code point and by most collations
    live = {i: rng.sample(range(1, 9), rng.randint(0, 3)) or None for i in ids}
    shadow = {i: ("done", rng.sample(range(1, 9), rng.randint(1, 3))) for i in ids}
    run_id = _canary(database_url, live, shadow)
    with transaction(database_url) as conn:
        diff = diff_shadow_against_live(conn, run_id, top=25)

    def changes(i: str) -> set[int]:
        return set(live[i] or []) ^ set(shadow[i][1] or [])

    changed = [i for i in ids if changes(i)]
    expected = sorted(changed, key=lambda i: (-len(changes(i)), i))[:25]  # ties by code point
    assert [repo_id for repo_id, *_ in diff.changed_most] == expected
    assert [n for *_, n in diff.changed_most] == [len(changes(i)) for i in expected]
    assert diff.changed == len(changed) and diff.unchanged == len(ids) - len(changed)
    assert diff.added == Counter(t for i in changed for t in set(shadow[i][1] or []) - set(live[i] or []))
    assert diff.removed == Counter(t for i in changed for t in set(live[i] or []) - set(shadow[i][1] or []))


@pytest.mark.parametrize("only", [["b", "owner/c"], []])
def test_the_sample_can_be_read_for_some_repos_by_id_or_name(database_url, only):
    run_id = _canary(database_url, live={"a": [1], "b": [2], "c": None},
                     shadow={"a": ("done", [1]), "b": ("done", [3]), "c": ("done", [4])})
    with transaction(database_url) as conn:
        rows = list(iter_shadow_against_live(conn, run_id, only=only))
    assert [(r.repo_id, r.live, r.shadow) for r in rows] == ([("b", [2], [3]), ("c", None, [4])] if only else [])
