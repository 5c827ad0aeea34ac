"""The alert rules and the Prometheus configuration, checked by Prometheus' own tool: `promtool check`
and `promtool test rules` (a unit test for every alert, deploy/prometheus/alerts_test.yml). CI installs
promtool (scripts/install-prometheus.sh); elsewhere these tests skip, saying why."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")

needs_promtool = pytest.mark.skipif(PROMTOOL is None,
                                    reason="promtool is not installed (scripts/install-prometheus.sh)")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120)


def alert_names(path: Path) -> list[str]:
    rules = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule]


def test_every_alert_has_a_unit_test_that_expects_it_to_fire():
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text(encoding="utf-8"))["tests"]
    fired = {case["alertname"] for test in tests for case in test.get("alert_rule_test", []) if case["exp_alerts"]}
    quiet = {case["alertname"] for test in tests for case in test.get("alert_rule_test", []) if not case["exp_alerts"]}
    names = alert_names(PROMETHEUS / "alerts.yml")
    assert len(names) >= 7
    assert set(names) <= fired, "an alert without a test where it fires"
    assert set(names) - {"TaggerExporterDown"} <= quiet, "an alert without a test where it stays quiet"


def test_the_required_alerts_exist():
    names = set(alert_names(PROMETHEUS / "alerts.yml"))
    assert {"TaggerStalled", "TaggerDeadLettersRising", "TaggerNoWorker", "TaggerQueueAboveHighWater",
            "TaggerDatabaseDown", "TaggerBrokerDown", "TaggerCanaryUnfinished"} <= names


@needs_promtool
def test_promtool_checks_the_rules():
    checked = promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


@needs_promtool
def test_promtool_runs_every_alerts_unit_test():
    tested = promtool("test", "rules", "alerts_test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr


@needs_promtool
def test_promtool_checks_the_prometheus_configuration():
    checked = promtool("check", "config", "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
