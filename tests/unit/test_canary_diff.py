"""The pure parts of re-tagging: the canary's sample, its diff, the worker's run check, tag names."""

from __future__ import annotations

import random

import pytest

from db.canary import ShadowVsLive
from db.configuration import Configuration
from db.runs import Run
from producer.runs import check_canary_worker, choose_sample, compare, resolve_tags
from tagger.errors import ConfigError, InputError
from tagger.taxonomy import Taxonomy
from workers.batch import WrongWorker, check_run

IDS = [f"r{i:04d}" for i in range(1000)]


def test_the_sample_depends_on_the_seed_and_the_index_only():
    sample = choose_sample(IDS, 50, seed=7)
    shuffled = IDS[:]
    random.Random(1).shuffle(shuffled)
    assert choose_sample(iter(shuffled), 50, seed=7) == sample  # whatever order the pages come in
    assert len(sample) == 50 and sample == sorted(set(sample)) and set(sample) <= set(IDS)
    assert choose_sample(IDS, 50, seed=8) != sample
    # A bigger index keeps most of the sample: a repo is drawn by its own hash, not its position.
    grown = choose_sample([*IDS, *(f"s{i}" for i in range(100))], 50, seed=7)
    assert len(set(grown) & set(sample)) >= 40
    assert choose_sample([], 5, seed=1) == [] and choose_sample(IDS[:3], 5, seed=1) == IDS[:3]


def row(repo_id, live, shadow, state="done", pinned=False):
    return ShadowVsLive(repo_id, "", state, shadow, live, pinned)


CONFIGURATION = Configuration("keyword", "keyword-v1", "p1", 1)


def run_of(run_id: int, kind: str) -> Run:
    return Run(run_id, kind, None, "me", None, CONFIGURATION, "all", 0, None, None)


def test_diff_counts_unchanged_added_removed_and_orders_the_biggest_changes_first():
    names = {1: "a", 2: "b", 3: "c", 4: "d"}
    rows = [
        row("x", [1, 2], [2, 1]),  # same tags, another order: unchanged
        row("y", [1], [3]),  # one swapped: 2 changes
        row("z", None, [1, 2, 3]),  # untagged live: 3 added
        row("w", [1, 2, 3], [4]),  # 4 changes
        row("p", [4], [1], pinned=True),
        row("q", [1], None, state="queued"),
        row("d", [1], None, state="dead"),
    ]
    diff = compare(9, rows, names, top=2)
    assert (diff.sample, diff.done, diff.pending, diff.dead, diff.unchanged, diff.pinned) == (7, 5, 1, 1, 1, 1)
    assert diff.share_unchanged == 0.2
    assert diff.added == {"a": 2, "c": 2, "b": 1, "d": 1}
    assert diff.removed == {"a": 2, "b": 1, "c": 1, "d": 1}
    assert [c["id"] for c in diff.changed_most] == ["w", "z"]
    assert diff.changed_most[0] == {"id": "w", "old": ["a", "b", "c"], "new": ["d"], "changed": 4}
    assert diff.as_json()["share_unchanged"] == 0.2
    assert compare(1, [], names, top=3).share_unchanged is None


def test_a_batch_goes_only_to_the_worker_of_its_kind():
    live, canary = run_of(1, "live"), run_of(2, "canary")
    assert check_run(live, 1, None) is False
    assert check_run(None, None, None) is False
    assert check_run(canary, 2, 2) is True
    with pytest.raises(WrongWorker):
        check_run(canary, 2, None)  # a canary's batch on a live worker
    with pytest.raises(WrongWorker):
        check_run(live, 1, 2)  # another run's batch on a canary worker
    with pytest.raises(WrongWorker):
        check_run(None, 2, 2)  # a canary worker never writes without its run


def test_a_canary_worker_must_run_the_canarys_configuration():
    run = run_of(3, "canary")
    check_canary_worker(run, Configuration("keyword", "keyword-v1", "p1", 1))
    with pytest.raises(ConfigError, match="prompt_version 'p1d' \\(canary: 'p1'\\)"):
        check_canary_worker(run, Configuration("keyword", "keyword-v1", "p1d", 1))


def test_tag_names_are_resolved_as_the_taxonomy_matches_them():
    taxonomy = Taxonomy.load()
    assert resolve_tags(taxonomy, " AI , cli,ai") == [taxonomy.by_name("ai").id, taxonomy.by_name("cli").id]
    for raw, message in [("nope", "unknown tag name 'nope'"), (",", "at least one"),
                         ("ai,cli,game,3d", "at most 3 tags")]:
        with pytest.raises(InputError, match=message):
            resolve_tags(taxonomy, raw)


def test_diff_takes_the_sample_in_one_pass_and_keeps_the_biggest_changes_in_order():
    rng = random.Random(3)
    names = {i: f"t{i}" for i in range(1, 9)}
    rows = [row(f"r{i:05d}", rng.sample(range(1, 9), rng.randint(0, 3)), rng.sample(range(1, 9), rng.randint(1, 3)))
            for i in range(3000)]
    consumed = []
    diff = compare(4, (consumed.append(r) or r for r in rows), names, top=25)  # a generator: read once
    assert len(consumed) == 3000 and diff.sample == diff.done == 3000

    def changes(r):
        return len(set(r.live) ^ set(r.shadow))

    expected = sorted((r for r in rows if changes(r)), key=lambda r: (-changes(r), r.repo_id))[:25]
    assert [c["id"] for c in diff.changed_most] == [r.repo_id for r in expected]
    assert diff.unchanged == sum(not changes(r) for r in rows)
    assert compare(4, iter(rows), names, top=0).changed_most == []
