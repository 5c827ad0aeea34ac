"""The pure parts of re-tagging: the canary's diff in tag names, the worker's run check, tag names."""

from __future__ import annotations

import pytest

from db.canary import ShadowDiff
from db.configuration import Configuration
from db.runs import Run
from producer.canary import check_canary_worker
from producer.runs import describe, resolve_tags
from tagger.errors import ConfigError, InputError
from tagger.taxonomy import Taxonomy
from workers.batch import WrongWorker, check_run

CONFIGURATION = Configuration("keyword", "keyword-v1", "p1", 1)


def run_of(run_id: int, kind: str) -> Run:
    return Run(run_id, kind, None, "me", None, CONFIGURATION, "all", 0, None, None)


def test_the_servers_diff_is_shown_in_tag_names_by_count_then_name():
    names = {1: "a", 2: "b", 3: "c", 4: "d"}
    counted = ShadowDiff(sample=7, done=5, pending=1, dead=1, changed=4, pinned=1,
                         added={4: 1, 1: 2, 3: 2, 2: 1}, removed={9: 1, 1: 2},
                         changed_most=[("w", [1, 2, 3], [4], 4), ("z", [], [1, 9], 2)])
    diff = describe(9, counted, names)
    assert (diff.sample, diff.done, diff.pending, diff.dead, diff.unchanged, diff.pinned) == (7, 5, 1, 1, 1, 1)
    assert diff.share_unchanged == 0.2 and diff.as_json()["share_unchanged"] == 0.2
    assert list(diff.added.items()) == [("a", 2), ("c", 2), ("b", 1), ("d", 1)]
    assert list(diff.removed.items()) == [("a", 2), ("9", 1)]  # an id the taxonomy no longer has: its number
    assert diff.changed_most == [{"id": "w", "old": ["a", "b", "c"], "new": ["d"], "changed": 4},
                                 {"id": "z", "old": [], "new": ["a", "9"], "changed": 2}]
    empty = describe(1, ShadowDiff(0, 0, 0, 0, 0, 0, {}, {}, []), names)
    assert empty.share_unchanged is None and empty.added == {} and empty.changed_most == []


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
