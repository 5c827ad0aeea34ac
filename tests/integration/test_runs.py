"""Runs, history and rollback, pinned tags, the shadow canary, diff and promote, on a real PostgreSQL
and Redis. Workers are played in-process: each message is taken off the real queue and given to
workers.batch.process_batch, as the task does (the real worker process is tested in
tests/acceptance/test_canary.py)."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence

import pytest
import sqlalchemy as sa

from db.engine import get_engine, transaction
from db.models import jobs, manual_tags, result_history, results, runs, shadow_results
from db.repos import upsert_repos
from db.results import upsert_results
from db.runs import lock_run_for_write
from db.taxonomy import load_taxonomy
from tagger.backends import Generation
from tagger.backends.keyword import KeywordTagger
from tagger.prompt import Prompt
from tagger.settings import Settings
from tests.support.data import readme_fixture_rows
from tests.support.processes import run_cli, wait_until
from tests.support.queues import queued_messages, take_message
from workers.batch import WrongWorker, process_batch
from workers.contract import canary_queue
from workers.runtime import Runtime


class Fixed:
    """A fake model that answers the same tags for every README."""

    name = "fixed"
    model = "fixed-v1"

    def __init__(self, *names: str) -> None:
        self.answer = json.dumps({"tags": list(names)})

    def generate(self, prompts: Sequence[Prompt]) -> list[Generation | Exception]:
        return [Generation(self.answer) for _ in prompts]

    def close(self) -> None:
        pass


def seed(settings: Settings) -> list[str]:
    rows = readme_fixture_rows()
    with transaction(settings.database_url) as conn:
        upsert_repos(conn, rows)
    return sorted(r["id"] for r in rows)


def drain(settings: Settings, queue: str, tagger=None, canary_run: int | None = None, limit: int | None = None) -> int:
    """Play a worker: tag the messages waiting in ``queue`` (at most ``limit``); how many were taken."""
    runtime = Runtime.start(settings, tagger=tagger or KeywordTagger())
    taken = 0
    while limit is None or taken < limit:
        message = take_message(queue)
        if message is None:
            break
        batch, run_id = message
        process_batch(runtime, batch, f"t{taken}", run_id, canary_run)
        taken += 1
    return taken


def live(settings: Settings) -> dict[str, tuple[list[str], int | None, str]]:
    """repo id → (tag names, run id, backend) of the live results."""
    with transaction(settings.database_url) as conn:
        names = {t.id: t.name for t in load_taxonomy(conn).tags}
        rows = conn.execute(sa.select(results.c.repo_id, results.c.tag_ids, results.c.run_id, results.c.backend))
        return {r: ([names[t] for t in tags], run, backend) for r, tags, run, backend in rows}


def count(settings: Settings, table: sa.Table) -> int:
    with transaction(settings.database_url) as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def enqueue(env: dict[str, str], *args: str) -> int:
    out = run_cli(env, "enqueue", *args).stdout
    return int(out.rsplit("(run ", 1)[1].rstrip(")\n"))


def run_json(env: dict[str, str], run_id: int) -> dict:
    return json.loads(run_cli(env, "status", "--run", str(run_id), "--json").stdout)


def test_every_enqueue_records_a_run_and_its_messages_carry_it(settings, env):
    ids = seed(settings)
    first = enqueue(env, "--all", "--label", "first pass", "--batch-size", "8")
    messages = queued_messages(settings.queue)
    assert [run for _, run in messages] == [first] * 3 and sorted(i for b, _ in messages for i in b) == ids
    drain(settings, settings.queue)
    shown = run_json(env, first)
    assert (shown["kind"], shown["label"], shown["selection"], shown["backend"]) == ("live", "first pass", "all",
                                                                                    "keyword")
    assert shown["started_by"] and shown["taxonomy_version"] == 1
    assert (shown["counts"]["enqueued"], shown["counts"]["done"], shown["counts"]["results_current"]) == (20, 20, 20)
    assert {run for _, run, _ in live(settings).values()} == {first}
    # Nothing to do: no run is recorded.
    assert "enqueued 0 repos" in run_cli(env, "enqueue", "--stale").stdout
    second = enqueue(env, "--ids", "1001,1002")
    listed = [json.loads(line) for line in run_cli(env, "runs", "--json").stdout.splitlines()]
    assert [r["id"] for r in listed] == [second, first] and listed[0]["selection"] == "ids"
    text = run_cli(env, "runs").stdout.splitlines()
    assert len(text) == 3 and text[2].split()[:2] == [str(first), "live"] and "keyword/keyword-v1" in text[2]


def test_rerun_keeps_history_and_rollback_restores_all_but_changed_and_pinned(settings, env):
    ids = seed(settings)
    first = enqueue(env, "--all")
    drain(settings, settings.queue)
    before = live(settings)
    second = enqueue(env, "--all", "--label", "new model")
    drain(settings, settings.queue, Fixed("ai", "agent"))
    assert all(tags == ["ai", "agent"] and run == second for tags, run, _ in live(settings).values())
    assert count(settings, result_history) == 20  # each first version kept
    history = run_cli(env, "history", "1001").stdout.splitlines()
    assert len(history) == 2 and "ai, agent" in history[0] and "[live]" in history[0]
    assert "replaced" in history[1] and f"run {second}" in history[1] and f"run {first}" in history[1]

    run_cli(env, "tags", "set", "1002", "cli,dev-tool", "--note", "checked by hand")
    third = enqueue(env, "--ids", "1003")
    drain(settings, settings.queue, Fixed("frontend"))
    out = run_cli(env, "rollback", str(second))
    assert f"run {second} rolled back: 18 restored" in out.stdout
    assert "changed again since: 1: 1003" in out.stderr and "pinned by hand: 1: 1002" in out.stderr
    after = live(settings)
    for repo_id in set(ids) - {"1002", "1003"}:
        assert after[repo_id][:2] == before[repo_id][:2]
    assert after["1002"][0] == ["cli", "dev-tool"] and after["1002"][2] == "manual"
    assert after["1003"][:2] == (["frontend"], third)
    assert run_json(env, second)["rolled_back_at"] is not None
    # Rolling back again finds nothing of the run live any more.
    assert "0 restored, 0 untagged" in run_cli(env, "rollback", str(second)).stdout
    assert live(settings) == after


def test_rollback_of_a_run_that_tagged_first_untags_and_drops_its_late_batches(settings, env):
    seed(settings)
    run = enqueue(env, "--all", "--batch-size", "5")
    drain(settings, settings.queue, limit=2)  # half the run is in, half still queued
    assert len(live(settings)) == 10
    out = run_cli(env, "rollback", str(run)).stdout
    assert "0 restored, 10 untagged" in out
    drain(settings, settings.queue)  # the run's late batches arrive after the rollback
    assert live(settings) == {}
    with transaction(settings.database_url) as conn:
        states = dict(conn.execute(sa.select(jobs.c.state, sa.func.count()).group_by(jobs.c.state)).all())
    assert states == {"done": 20}  # the work is finished, its results dropped
    assert "enqueued 20 repos" in run_cli(env, "enqueue", "--stale").stdout  # and a refresh picks them up


def test_rollback_waits_for_a_write_in_flight_and_undoes_it_too(settings, env):
    """A worker's write holds its run's lock, shared: the rollback starts after it commits, so the
    result written in that very moment is rolled back as well, never left behind."""
    seed(settings)
    run = enqueue(env, "--ids", "1001")
    _batch, run_id = take_message(settings.queue)
    engine = get_engine(settings.database_url)
    writer = engine.connect()
    tx = writer.begin()
    assert lock_run_for_write(writer, run).rolled_back_at is None
    done = threading.Event()
    outcome: list[str] = []

    def roll() -> None:
        outcome.append(run_cli(env, "rollback", str(run)).stdout)
        done.set()

    thread = threading.Thread(target=roll)
    thread.start()

    def rollback_waits_on_a_lock() -> bool:
        with engine.connect() as conn:
            return bool(conn.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND wait_event = 'advisory'")).scalar())

    wait_until(rollback_waits_on_a_lock, timeout=20, what="the rollback waiting for the write")
    assert not done.is_set()
    upsert_results(writer, [{"repo_id": "1001", "tag_ids": [17], "backend": "keyword", "model": "keyword-v1",
                             "prompt_version": "p", "taxonomy_version": 1, "readme_hash": "h", "readme_version": 1,
                             "raw_output": "", "latency_ms": 1.0, "run_id": run_id}])
    tx.commit()
    writer.close()
    thread.join(timeout=30)
    assert "0 restored, 1 untagged" in outcome[0]
    assert live(settings) == {}


def test_pinned_tags_survive_every_writer_and_export_marks_them(settings, env):
    seed(settings)
    enqueue(env, "--all")
    drain(settings, settings.queue)
    machine = live(settings)["1004"]
    out = run_cli(env, "tags", "set", "1004", "Game, 3d", "--note", "a game engine")
    assert out.stdout.strip() == "1004: pinned game, 3d"
    pinned = (["game", "3d"], None, "manual")
    enqueue(env, "--all")  # a live run
    drain(settings, settings.queue, Fixed("ai"))
    assert live(settings)["1004"] == pinned
    # The write step's SQL itself refuses: a batch computed before the pin, written after it.
    with transaction(settings.database_url) as conn:
        upsert_results(conn, [{"repo_id": "1004", "tag_ids": [17], "backend": "keyword", "model": "m",
                               "prompt_version": "p", "taxonomy_version": 1, "readme_hash": "h",
                               "readme_version": 99, "raw_output": "", "latency_ms": 1.0, "run_id": None}])
    assert live(settings)["1004"] == pinned
    # A refresh never selects it (nor the sweeper: it is done).
    assert "1004" not in [i for b, _ in queued_messages(settings.queue) for i in b]
    run_cli(env, "enqueue", "--stale")
    assert "1004" not in [i for b, _ in queued_messages(settings.queue) for i in b]
    drain(settings, settings.queue)
    exported = {row["id"]: row for row in map(json.loads, run_cli(env, "export").stdout.splitlines())}
    assert exported["1004"]["source"] == "manual" and [t["name"] for t in exported["1004"]["tags"]] == ["game", "3d"]
    assert "source" not in exported["1001"]
    shown = run_cli(env, "history", "1004").stdout
    assert "a game engine" in shown and "pinned by" in shown
    with transaction(settings.database_url) as conn:
        pin = conn.execute(sa.select(manual_tags)).mappings().one()
    assert pin["note"] == "a game engine" and pin["set_by"] and pin["set_at"] is not None
    # Released: the last machine result is back (and stale, so the next refresh re-tags it).
    run_cli(env, "tags", "unset", "1004")
    assert live(settings)["1004"] == machine
    assert count(settings, manual_tags) == 0


def test_canary_tags_a_reproducible_sample_into_shadow_results_only(settings, env):
    ids = seed(settings)
    first = enqueue(env, "--all")
    drain(settings, settings.queue)
    before = live(settings)
    with transaction(settings.database_url) as conn:
        jobs_before = conn.execute(sa.select(jobs).order_by(jobs.c.repo_id)).all()
    run_cli(env, "tags", "set", "1005", "learning-resource")
    before = live(settings)
    canary_env = {**env, "TAGGER_PROMPT_DESCRIPTIONS": "false"}
    out = run_cli(canary_env, "canary", "--sample", "8", "--seed", "42", "--label", "try p1").stdout
    canary = int(out.split()[2].rstrip(":"))
    queue = canary_queue(settings.queue, canary)
    assert f"queue {queue}" in out and f"tagger worker --canary {canary}" in out
    assert queued_messages(settings.queue) == []  # nothing for the live workers
    sample = sorted(i for b, _ in queued_messages(queue) for i in b)
    assert len(sample) == 8 and set(sample) <= set(ids)
    again = int(run_cli(canary_env, "canary", "--sample", "8", "--seed", "42").stdout.split()[2].rstrip(":"))
    assert sorted(i for b, _ in queued_messages(canary_queue(settings.queue, again)) for i in b) == sample
    other = int(run_cli(canary_env, "canary", "--sample", "8", "--seed", "43").stdout.split()[2].rstrip(":"))
    assert sorted(i for b, _ in queued_messages(canary_queue(settings.queue, other)) for i in b) != sample

    # A live worker refuses a canary's batch; a canary worker refuses another run's.
    batch, run_id = queued_messages(queue)[0]
    with pytest.raises(WrongWorker):
        process_batch(Runtime.start(settings, tagger=KeywordTagger()), batch, "t", run_id, None)
    with pytest.raises(WrongWorker):
        process_batch(Runtime.start(settings, tagger=KeywordTagger()), batch, "t", first, canary)
    drain(settings, queue, Fixed("ai", "agent"), canary_run=canary)
    assert live(settings) == before  # no reader of live results sees the canary
    with transaction(settings.database_url) as conn:
        assert conn.execute(sa.select(jobs).order_by(jobs.c.repo_id)).all() == jobs_before
        states = conn.execute(sa.select(shadow_results.c.state).where(shadow_results.c.run_id == canary)).scalars()
        assert set(states) == {"done"}
    shown = run_json(env, canary)
    assert (shown["kind"], shown["label"], shown["selection"]) == ("canary", "try p1", "sample 8 seed 42")
    assert shown["counts"]["done"] == 8 and shown["prompt_version"] != run_json(env, first)["prompt_version"]

    diff = json.loads(run_cli(env, "diff", str(canary), "--json").stdout)
    expected_unchanged = sum(1 for i in sample if sorted(before[i][0]) == ["ai", "agent"])
    assert (diff["sample"], diff["done"], diff["unchanged"]) == (8, 8, expected_unchanged)
    assert diff["share_unchanged"] == round(expected_unchanged / 8, 4)
    assert diff["added"].get("ai", 0) == sum(1 for i in sample if "ai" not in before[i][0])
    removed = sum(len(set(before[i][0]) - {"ai", "agent"}) for i in sample)
    assert sum(diff["removed"].values()) == removed
    most = diff["changed_most"][0]
    assert most["new"] == ["ai", "agent"] and most["old"] == before[most["id"]][0]
    text = run_cli(env, "diff", str(canary)).stdout
    assert f"unchanged: {expected_unchanged} of 8" in text and "changed most:" in text

    report = run_cli(env, "promote", str(canary))
    pinned_in_sample = 1 if "1005" in sample else 0
    assert f"promoted {8 - pinned_in_sample} results" in report.stdout
    after = live(settings)
    for repo_id in sample:
        expected = before[repo_id] if repo_id == "1005" else (["ai", "agent"], canary, "fixed")
        assert after[repo_id] == expected
    for repo_id in set(ids) - set(sample):
        assert after[repo_id] == before[repo_id]
    # Promoting again changes nothing.
    assert "promoted 0 results" in run_cli(env, "promote", str(canary)).stdout
    assert live(settings) == after
    # And the promote is a run like any other: rolled back, the live tags are those of before.
    run_cli(env, "rollback", str(canary))
    assert live(settings) == before


def test_diff_scores_both_sides_on_labelled_repos_of_the_sample(settings, env, tmp_path):
    seed(settings)
    enqueue(env, "--all")
    drain(settings, settings.queue, Fixed("cli"))
    canary = int(run_cli(env, "canary", "--sample", "20", "--seed", "1").stdout.split()[2].rstrip(":"))
    drain(settings, canary_queue(settings.queue, canary), Fixed("ai"), canary_run=canary)
    rows = readme_fixture_rows()
    gold = tmp_path / "gold.jsonl"
    # Made-up labels: two repos "are" ai, matched one by id and one by name; a third is not in the index.
    by_name = next(r for r in rows if r["name"] and r["id"] != "1001")
    gold.write_text("".join(json.dumps(line) + "\n" for line in [
        {"repo": "1001", "readme": "x", "gold": ["ai"]},
        {"repo": by_name["name"], "readme": "x", "gold": ["ai"]},
        {"repo": "elsewhere/nothing", "readme": "x", "gold": ["cli"]},
    ]))
    scores = json.loads(run_cli(env, "diff", str(canary), "--json", "--gold", str(gold)).stdout)["gold"]
    assert scores["labelled"] == 2
    assert (scores["live"]["f1"], scores["shadow"]["f1"]) == (0.0, 1.0)
    text = run_cli(env, "diff", str(canary), "--gold", str(gold)).stdout
    assert "on 2 labelled repos" in text and "shadow  precision 1.000" in text


def test_concurrent_duplicate_promotes_write_once(settings, env):
    seed(settings)
    canary = int(run_cli(env, "canary", "--sample", "12", "--seed", "5").stdout.split()[2].rstrip(":"))
    drain(settings, canary_queue(settings.queue, canary), Fixed("ai"), canary_run=canary)
    outputs: list[str] = []
    # Real processes: Click's runner swaps sys.stdout, so in-process commands cannot run side by side.
    threads = [threading.Thread(target=lambda: outputs.append(
        run_cli(env, "promote", str(canary), in_process=False).stdout)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    promoted = sorted(int(o.split()[1]) for o in outputs)
    assert promoted == [0, 0, 12]
    assert len(live(settings)) == 12 and count(settings, result_history) == 0


def test_promote_while_live_workers_write_the_same_repos(settings, env):
    """Promote and a live run's batches on the same repos at once: row locks in id order, no deadlock,
    every replaced version in history exactly once, and each repo's live result is one of the two."""
    ids = seed(settings)
    canary = int(run_cli(env, "canary", "--sample", "20", "--seed", "9").stdout.split()[2].rstrip(":"))
    drain(settings, canary_queue(settings.queue, canary), Fixed("ai"), canary_run=canary)
    live_run = enqueue(env, "--all", "--batch-size", "2")
    errors: list[BaseException] = []

    def work() -> None:
        try:
            drain(settings, settings.queue, Fixed("frontend"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    worker = threading.Thread(target=work)
    worker.start()
    run_cli(env, "promote", str(canary))
    worker.join(timeout=120)
    assert not errors
    final = live(settings)
    assert set(final) == set(ids)
    assert all((tags, run) in ((["ai"], canary), (["frontend"], live_run)) for tags, run, _ in final.values())
    with transaction(settings.database_url) as conn:
        versions = conn.execute(sa.select(result_history.c.repo_id, sa.func.count()).group_by(
            result_history.c.repo_id)).all()
    # Each repo was written twice (once by each); the first write replaced nothing.
    assert all(n == 1 for _, n in versions) and len(versions) == 20


@pytest.mark.parametrize("args, message", [
    (("tags", "set", "nope", "ai"), "error: unknown repo id 'nope': it is not in the index"),
    (("tags", "set", "1001", "ai,not-a-tag"), "error: unknown tag name 'not-a-tag'"),
    (("tags", "set", "1001", "ai,agent,cli,frontend"), "error: at most 3 tags per repo, got 4"),
    (("tags", "set", "1001", " , "), "error: give at least one tag name"),
    (("tags", "unset", "1001"), "error: repo '1001' has no pinned tags"),
    (("tags", "unset", "nope"), "error: unknown repo id 'nope'"),
    (("history", "nope"), "error: unknown repo id 'nope'"),
    (("rollback", "999"), "error: there is no run 999"),
    (("promote", "999"), "error: there is no run 999"),
    (("diff", "999"), "error: there is no run 999"),
    (("status", "--run", "999"), "error: there is no run 999"),
    (("worker", "--canary", "999"), "error: there is no run 999"),
    (("promote", "LIVE"), "is a live run, not a canary run"),
    (("diff", "LIVE"), "is a live run, not a canary run"),
    (("worker", "--canary", "LIVE"), "is a live run, not a canary run"),
    (("canary", "--sample", "0"), "error: the sample must hold at least one repo, not 0"),
])
def test_bad_input_is_one_line_and_changes_nothing(settings, env, args, message):
    seed(settings)
    live_run = enqueue(env, "--ids", "1001,1002")
    drain(settings, settings.queue)

    def snapshot() -> list:
        with transaction(settings.database_url) as conn:
            return [conn.execute(sa.select(table).order_by(*table.primary_key.columns)).all()
                    for table in (runs, results, result_history, manual_tags, shadow_results, jobs)]

    before = snapshot()
    args = tuple(str(live_run) if a == "LIVE" else a for a in args)
    result = run_cli(env, *args, check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert snapshot() == before


def test_canary_of_an_empty_index_is_refused(settings, env):
    result = run_cli(env, "canary", "--sample", "5", check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: the index holds no repos: there is nothing to sample"
    assert count(settings, runs) == 0

