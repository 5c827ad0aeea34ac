"""Monitoring as an operator runs it: a real worker and a real exporter (`tagger metrics`) serve their
/metrics during a real run; `promtool check metrics` reads both; a real Prometheus (Debian's package,
scripts/install-prometheus.sh) scrapes them, loads deploy/prometheus/alerts.yml, and every dashboard
panel's and every alert's expression is evaluated through its HTTP API. `tagger health` answers 0 with
a worker running and 1 without one."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from bench import free_port
from tests.support.data import readme_fixture_rows, write_jsonl
from tests.support.faulty_backend import fault_marker
from tests.support.http import http_get
from tests.support.processes import run_cli, status, tagger_process, wait_until, worker_process

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
N = 20


def answers(url: str) -> bool:
    return http_get(url)[0] == 200


def promtool_check_metrics(text: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        return  # the scrape's own assertions still hold; the unit tests say promtool is missing
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def sample(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def panel_expressions() -> list[tuple[str, str]]:
    found = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            found += [(panel["title"], target["expr"]) for target in panel["targets"]]
    return found


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


@pytest.fixture
def pipeline(env, tmp_path):
    """Twenty repos tagged by a real worker (its metrics on a free port), the exporter running, and a
    canary of 3 repos left without a worker (so that the canary gauge has a series)."""
    worker_port, exporter_port = free_port(), free_port()
    env = {**env, "TAGGER_WORKER_METRICS_PORT": str(worker_port)}
    run_cli(env, "import", str(write_jsonl(tmp_path / "repos.jsonl", readme_fixture_rows())))
    with worker_process(env, log=tmp_path / "worker.log"), \
            tagger_process(env, "metrics", "--port", str(exporter_port), log=tmp_path / "metrics.log"):
        worker_url, exporter_url = f"http://127.0.0.1:{worker_port}", f"http://127.0.0.1:{exporter_port}"
        wait_until(lambda: answers(f"{worker_url}/healthz") and answers(f"{exporter_url}/healthz"), timeout=120,
                   what="the worker's and the exporter's /healthz")
        run_cli(env, "enqueue", "--all", "--batch-size", "6")
        wait_until(lambda: status(env)["tagged"] == N, timeout=120, what=f"{N} repos tagged")
        run_cli(env, "canary", "--sample", "3", "--seed", "1")
        yield env, worker_url, exporter_url


def test_worker_and_exporter_serve_prometheus_conventions(pipeline):
    _env, worker_url, exporter_url = pipeline
    code, worker_text = http_get(f"{worker_url}/metrics")
    assert code == 200
    assert sample(worker_text, "tagger_repos_tagged_total", backend="keyword") == N
    assert sample(worker_text, "tagger_dead_letters_total") == 0
    assert sample(worker_text, "tagger_batches_total", outcome="tagged") == 4  # 20 repos in batches of 6
    assert sample(worker_text, "tagger_batch_duration_seconds_count") == 4
    assert sample(worker_text, "tagger_backend_seconds_per_repo_count") == N
    assert sample(worker_text, "tagger_queue_wait_seconds_count") == 4  # every message says when it was sent
    assert re.search(r'^tagger_batch_duration_seconds_bucket\{le="\+Inf"\} 4\.0$', worker_text, re.M)
    assert sample(worker_text, "tagger_build_info", backend="keyword", version="0.1.0") == 1
    promtool_check_metrics(worker_text)

    code, exporter_text = http_get(f"{exporter_url}/metrics")
    assert code == 200
    assert sample(exporter_text, "tagger_repos", state="done") == N
    assert sample(exporter_text, "tagger_workers_online") == 1
    assert sample(exporter_text, "tagger_database_up") == 1 and sample(exporter_text, "tagger_broker_up") == 1
    assert sample(exporter_text, "tagger_run_tagged", kind="live") == N
    assert sample(exporter_text, "tagger_canary_pending") == 3
    # Rates are PromQL's, and no gauge repeats another.
    for gone in ("tagger_tag_rate_per_second", "tagger_repos_tagged ", "tagger_dead_letters "):
        assert gone not in exporter_text
    promtool_check_metrics(exporter_text)

    for url in (worker_url, exporter_url):
        code, body = http_get(f"{url}/healthz")
        assert code == 200 and json.loads(body)["healthy"] is True
        assert http_get(f"{url}/nothing-here")[0] == 404


def test_tagger_health_answers_by_its_exit_status(pipeline, settings):
    env, _worker_url, _exporter_url = pipeline
    healthy = run_cli(env, "health", "--json", check=False)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    report = json.loads(healthy.stdout)
    assert report["healthy"] is True and len(report["nodes"]) == 1
    assert report["database"]["ok"] and report["broker"]["ok"] and report["workers"]["ok"]


def test_tagger_health_fails_without_a_worker(env):
    unhealthy = run_cli(env, "health", check=False)
    assert unhealthy.returncode == 1
    assert re.search(r"^workers\s+FAIL", unhealthy.stdout, re.M), unhealthy.stdout
    assert run_cli(env, "health", "--no-workers", check=False).returncode == 0


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus is not installed "
                    "(scripts/install-prometheus.sh)")
def test_prometheus_evaluates_every_panel_and_alert(pipeline, tmp_path):
    _env, worker_url, exporter_url = pipeline
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        # The exporter's scrape waits a second for the workers' answers: a scrape may take 2 s.
        "global": {"scrape_interval": "2s", "scrape_timeout": "2s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {"job_name": "tagger", "static_configs": [{"targets": [exporter_url.removeprefix("http://")]}]},
            {"job_name": "tagger-worker", "static_configs": [{"targets": [worker_url.removeprefix("http://")]}]},
        ],
    }))
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}/api/v1"

    def query(expr: str) -> dict[str, Any]:
        code, body = http_get(f"{api}/query?{urllib.parse.urlencode({'query': expr})}")
        answer: dict[str, Any] = json.loads(body) if body else {"status": f"http {code}"}
        return answer

    try:
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/-/ready"), timeout=60, what="prometheus ready")
        # Enough scrapes for rate() and increase() (two samples in their window at least).
        wait_until(lambda: query('count_over_time(up{job="tagger-worker"}[1m]) >= 3')["data"]["result"]
                   and query('count_over_time(up{job="tagger"}[1m]) >= 3')["data"]["result"],
                   timeout=60, what="three scrapes of each target")
        targets = json.loads(http_get(f"{api}/targets")[1])["data"]["activeTargets"]
        assert {t["labels"]["job"]: t["health"] for t in targets} == {"tagger": "up", "tagger-worker": "up"}, \
            [(t["labels"]["job"], t["lastError"]) for t in targets]

        for title, expr in panel_expressions():
            answer = query(expr)
            assert answer["status"] == "success", (title, expr, answer)
            assert answer["data"]["result"], f"panel {title!r}: {expr} returned no data"

        # Every alert: its expression is valid and evaluates; every metric it reads has series; and on
        # this healthy pipeline it holds exactly where it should: only the canary left without a worker.
        names = set(re.findall(r"\b(?:tagger_[a-z_]+|up)\b", ALERTS.read_text()))
        for name in names:
            assert query(f'count({{__name__="{name}"}})')["data"]["result"], f"no series of {name}"
        holding = set()
        for rule in alert_rules():
            answer = query(rule["expr"])
            assert answer["status"] == "success", (rule["alert"], answer)
            if answer["data"]["result"]:
                holding.add(rule["alert"])
        assert holding == {"TaggerCanaryUnfinished"}

        def rules_evaluated() -> list[dict[str, Any]] | None:
            loaded = json.loads(http_get(f"{api}/rules")[1])["data"]["groups"]
            rules = [r for g in loaded for r in g["rules"]]
            return rules if all(r.get("lastEvaluation", "").startswith("20") and
                                not r["lastEvaluation"].startswith("0001") for r in rules) else None

        rules = wait_until(rules_evaluated, timeout=30, what="every rule evaluated once")
        assert {r["name"] for r in rules} == {r["alert"] for r in alert_rules()}
        assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
        canary = next(r for r in rules if r["name"] == "TaggerCanaryUnfinished")
        assert canary["state"] == "pending"  # holds now; fires if it still holds after its `for`
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_flower_shows_dead_letters_and_queue_wait(env, settings, tmp_path):
    """A batch that dead-lettered repos is a FAILURE in Flower (its API, as its task list filters it),
    with the exception naming them; every batch says when it was sent; Flower's own options pass."""
    rows = readme_fixture_rows()[:5]
    for row in rows[:2]:
        row["readme"] = f"{fault_marker('UnusableReadme')}\n\n{row['readme']}"
    run_cli(env, "import", str(write_jsonl(tmp_path / "repos.jsonl", rows)))
    auth = ("ops", "flower-test-password")
    flower_env = {**env, "TAGGER_FLOWER_USER": auth[0], "TAGGER_FLOWER_PASSWORD": auth[1]}
    worker_env = {**env, "TAGGER_BACKEND": "tests.support.faulty_backend:factory", "PYTHONPATH": str(ROOT)}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tagger_process(flower_env, "flower", "--port", str(port), "--purge_offline_workers=60",
                        log=tmp_path / "flower.log") as flower:
        wait_until(lambda: flower.poll() is not None or http_get(f"{base}/healthcheck", auth)[0] == 200,
                   timeout=60, what="flower to answer")
        assert flower.poll() is None, (tmp_path / "flower.log").read_text()
        with worker_process(worker_env, log=tmp_path / "worker.log"):
            wait_until(lambda: http_get(f"{base}/api/workers?refresh=1", auth)[1].count(settings.queue) > 0,
                       timeout=60, what="flower to know the worker")
            run_cli(env, "enqueue", "--all", "--batch-size", "5")

            def failed_and_sent() -> dict[str, Any]:
                # Events may arrive in any order: wait for the batch's failure and its sending both.
                code, body = http_get(f"{base}/api/tasks?state=FAILURE", auth)
                tasks = json.loads(body) if code == 200 else {}
                return tasks if tasks and all(t.get("sent") for t in tasks.values()) else {}

            tasks = wait_until(failed_and_sent, timeout=60, what="a FAILURE task in flower, with its sent time")
    (task,) = tasks.values()
    assert task["name"] == "tagger.tag_batch"
    assert task["exception"].startswith("DeadLettered('2 of 5 repos dead-lettered (3 tagged, 0 retried)")
    assert task["sent"] and task["received"]  # Flower's queue wait: received - sent
    assert status(env)["dead"] == 2 and status(env)["tagged"] == 3


def test_tagger_health_beat_leader_and_standby(env, settings):
    """--beat: healthy when this host's beat leads and answers, or when another host's leads."""
    assert run_cli(env, "health", "--beat", check=False).returncode == 1  # no beat at all
    with tagger_process(env, "beat"):
        wait_until(lambda: run_cli(env, "health", "--beat", check=False).returncode == 0, timeout=60,
                   what="the beat leader answering")
    client = redis.Redis.from_url(settings.broker_url)
    try:
        client.set(f"tagger:beat-leader:{settings.queue}", "elsewhere:1:token", px=60_000)
        standby = run_cli(env, "health", "--beat", check=False)
        assert standby.returncode == 0 and "standby: the beat on elsewhere leads" in standby.stdout
    finally:
        client.delete(f"tagger:beat-leader:{settings.queue}")
        client.close()
