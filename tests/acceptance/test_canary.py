"""The shadow canary with real `tagger worker --canary RUN` processes: only the canary's worker takes
its batches, a worker of another configuration refuses to start, and a canary worker SIGKILLed mid-sample
loses nothing (late acks, the visibility timeout, `tagger sweep --canary`)."""

from __future__ import annotations

import os
import signal
import time

import sqlalchemy as sa

from bench import private_redis
from db.engine import transaction
from db.models import jobs, results, shadow_results
from db.repos import upsert_repos
from tests.support.data import readme_fixture_rows
from tests.support.processes import run_cli, wait_until, worker_process
from workers.contract import canary_queue, queue_depth

# The canary's configuration: another prompt version (no tag descriptions) and a shorter README budget.
CANARY = {"TAGGER_PROMPT_DESCRIPTIONS": "false", "TAGGER_README_TOKEN_BUDGET": "32"}


def import_repos(database_url: str, n: int) -> list[str]:
    fixtures = readme_fixture_rows()
    rows = [{"id": f"c{i:05d}", "name": f"o/c{i}", "readme": fixtures[i % len(fixtures)]["readme"]} for i in range(n)]
    with transaction(database_url) as conn:
        upsert_repos(conn, rows)
    return [r["id"] for r in rows]


def shadow_states(database_url: str, run_id: int) -> dict[str, int]:
    with transaction(database_url) as conn:
        rows = conn.execute(sa.select(shadow_results.c.state, sa.func.count()).where(
            shadow_results.c.run_id == run_id).group_by(shadow_results.c.state)).all()
    return {state: int(n) for state, n in rows}


def live_rows(database_url: str) -> tuple[int, int]:
    with transaction(database_url) as conn:
        return (int(conn.execute(sa.select(sa.func.count()).select_from(results)).scalar_one()),
                int(conn.execute(sa.select(sa.func.count()).select_from(jobs)).scalar_one()))


def test_canary_worker_killed_mid_sample_loses_nothing_and_live_stays_untouched(env, settings, tmp_path):
    n = 1500
    import_repos(settings.database_url, n)
    with private_redis() as broker:
        env = {**env, "TAGGER_BROKER_URL": broker, "TAGGER_VISIBILITY_TIMEOUT_S": "1", "TAGGER_BATCH_SIZE": "10"}
        canary_env = {**env, **CANARY}
        out = run_cli(canary_env, "canary", "--sample", "1000", "--seed", "11").stdout
        run_id = int(out.split()[2].rstrip(":"))
        queue = canary_queue(settings.queue, run_id)
        assert queue_depth(broker, queue) == 100 and queue_depth(broker, settings.queue) == 0

        # A worker of another configuration refuses to serve the canary, before taking anything.
        refused = run_cli(env, "worker", "--canary", str(run_id), check=False, in_process=False)
        assert refused.returncode == 2 and "does not run canary" in refused.stderr
        assert queue_depth(broker, queue) == 100

        log1, log2 = tmp_path / "canary1.log", tmp_path / "canary2.log"
        # A live worker runs alongside: it must take none of the canary's batches.
        with worker_process(env, "--hostname", "live@%h", log=tmp_path / "live.log"), \
                worker_process(canary_env, "--canary", str(run_id), "--hostname", "c1@%h", log=log1) as first:
            wait_until(lambda: shadow_states(settings.database_url, run_id).get("done", 0) >= 150, timeout=120,
                       what="part of the sample tagged")
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
            at_kill = shadow_states(settings.database_url, run_id).get("done", 0)
            killed_at = time.monotonic()
            swept: list[int] = []

            def all_done() -> bool:
                if shadow_states(settings.database_url, run_id) == {"done": 1000}:
                    return True
                if queue_depth(broker, queue) > 0:
                    return False
                # A message taken off the queue but not yet recorded as held when the kill came is lost
                # to Redis: the canary's sweeper re-sends its repos.
                swept.append(int(run_cli(env, "sweep", "--canary", str(run_id), "--older-than", "5")
                                 .stdout.split()[1]))
                return False

            with worker_process(canary_env, "--canary", str(run_id), "--hostname", "c2@%h", log=log2):
                wait_until(all_done, timeout=180, interval=1, what="the whole sample tagged after the kill")
            recovered_s = time.monotonic() - killed_at
    assert at_kill < 1000  # the kill came mid-sample
    assert live_rows(settings.database_url) == (0, 0)  # no live result, no live job state
    shown = run_cli(env, "status", "--run", str(run_id), "--json").stdout
    assert '"done": 1000' in shown and '"kind": "canary"' in shown
    print(f"\nFIGURE canary_sigkill: sample=1000, done_at_kill={at_kill}, swept={sum(swept)}, "
          f"kill_to_all_done_s={recovered_s:.1f}")


def live_tags(database_url: str) -> dict[str, tuple[list[int], int | None]]:
    with transaction(database_url) as conn:
        rows = conn.execute(sa.select(results.c.repo_id, results.c.tag_ids, results.c.run_id)).all()
    return {repo_id: (list(tags), run) for repo_id, tags, run in rows}


def test_rollback_while_a_worker_is_still_tagging_the_run_leaves_every_repo_as_before(env, settings, tmp_path):
    """A live run is rolled back while a real worker is halfway through it: what it wrote is restored,
    what it writes afterwards is dropped, so every repo ends with exactly its version from before."""
    n = 1000
    import_repos(settings.database_url, n)
    env = {**env, "TAGGER_BATCH_SIZE": "10"}
    with worker_process(env, "--hostname", "w1@%h", log=tmp_path / "w1.log"):
        run_cli(env, "enqueue", "--all")
        wait_until(lambda: len(live_tags(settings.database_url)) == n, timeout=120, what="the first run")
    before = live_tags(settings.database_url)
    # The new configuration reads less of each README: other tags for many repos.
    new_env = {**env, **CANARY}
    second = int(run_cli(new_env, "enqueue", "--all").stdout.rsplit("(run ", 1)[1].rstrip(")\n"))

    def written_by_second() -> int:
        return sum(run == second for _, run in live_tags(settings.database_url).values())

    with worker_process(new_env, "--hostname", "w2@%h", log=tmp_path / "w2.log"):
        wait_until(lambda: written_by_second() >= 100, timeout=120, what="part of the second run written")
        out = run_cli(env, "rollback", str(second)).stdout
        with transaction(settings.database_url) as conn:
            wait_until(lambda: conn.execute(sa.select(sa.func.count()).select_from(jobs)
                                            .where(jobs.c.state != "done")).scalar_one() == 0,
                       timeout=120, what="the rest of the second run")
        wait_until(lambda: queue_depth(settings.broker_url, settings.queue) == 0, timeout=30, what="queue drained")
    restored = int(out.split()[4])  # "run N rolled back: R restored, ..."
    assert 100 <= restored < n  # the rollback came mid-run
    assert live_tags(settings.database_url) == before
    print(f"\nFIGURE rollback_mid_run: repos={n}, restored={restored}, dropped_after={n - restored}")
