"""docker-compose.yml, checked by its structure (no Docker engine runs here)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from cli import cli
from tagger.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"

# The services the product documents; README.md's "Services" section, when it has one, adds its own.
SERVICES = {"postgres", "redis", "migrate", "worker", "worker-cpu", "beat", "flower", "metrics"}
TAGGER_NAME = re.compile(r"\bTAGGER_[A-Z0-9_]+\b")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def readme_services() -> set[str]:
    """Service names in README.md's section whose heading mentions services or compose: the first
    `backticked` word of each list item or table row there."""
    readme = ROOT / "README.md"
    if not readme.exists():
        return set()
    names: set[str] = set()
    in_section = False
    for line in readme.read_text(encoding="utf-8").splitlines():
        heading = re.match(r"#{2,4}\s+(.*)", line)
        if heading:
            in_section = bool(re.search(r"services|compose", heading.group(1), re.IGNORECASE))
            continue
        if in_section:
            item = re.match(r"\s*(?:[-*+]|\|)\s*`([a-z][a-z0-9-]*)`", line)
            if item:
                names.add(item.group(1))
    return names


def test_every_documented_service_exists(services):
    assert SERVICES | readme_services() <= set(services)


def test_stateful_services_have_volumes_and_healthchecks(services):
    for name in ("postgres", "redis"):
        assert services[name].get("healthcheck", {}).get("test"), name
        assert any(str(v).startswith(("pgdata:", "redisdata:")) for v in services[name]["volumes"]), name
    redis_command = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_command
    assert "--maxmemory-policy noeviction" in redis_command


def test_dependencies_wait_for_health_or_completion(services):
    conditions = {"service_healthy", "service_completed_successfully"}
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions (the long form)"
        for target, spec in depends.items():
            assert target in services, f"{name} depends on unknown {target}"
            assert spec.get("condition") in conditions, f"{name} → {target}: {spec}"
            if spec["condition"] == "service_healthy":
                assert services[target].get("healthcheck"), f"{target} has no healthcheck for {name} to wait on"
            else:
                assert services[target].get("restart") == "no", f"{target} is one-shot"
    assert services["migrate"]["command"] == ["db", "upgrade"]
    for name in ("worker", "worker-cpu", "beat", "metrics"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy", name
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy", name


def test_no_port_is_open_on_all_interfaces(services):
    published = 0
    for name, service in services.items():
        for port in service.get("ports", []):
            published += 1
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
            else:
                assert str(port).startswith("127.0.0.1:") and str(port).count(":") == 2, f"{name}: {port}"
        assert service.get("network_mode") != "host", name
    assert published >= 2  # flower and metrics


def test_gpu_worker_reserves_one_gpu_and_caches_models(services):
    worker = services["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1 and "gpu" in devices[0]["capabilities"]
    assert len(devices[0].get("device_ids", [])) == 1 or devices[0].get("count") == 1  # one worker per GPU
    assert worker["environment"]["TAGGER_BACKEND"] == "vllm"
    # One process holds the GPU (prefork would fork CUDA); its threads keep the model fed.
    assert worker["command"][:5] == ["worker", "--pool", "threads", "--concurrency", "2"]
    assert any(str(v).startswith("models:") for v in worker["volumes"])

    cpu = services["worker-cpu"]
    assert cpu["profiles"] == ["cpu"] and cpu["environment"]["TAGGER_BACKEND"] == "llamacpp"
    assert "deploy" not in cpu


def test_secrets_come_from_the_env_file(services):
    assert (ROOT / ".gitignore").read_text().splitlines().count(".env") == 1
    assert ENV_EXAMPLE.exists()
    text = COMPOSE.read_text(encoding="utf-8")
    for secret in ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "TAGGER_FLOWER_USER", "TAGGER_FLOWER_PASSWORD"):
        assert f"${{{secret}:?" in text, f"{secret} must be required from .env"
        assert re.search(rf"^{secret}=", ENV_EXAMPLE.read_text(), re.MULTILINE), secret
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN", key):
                assert str(value).startswith("${"), f"{name}: {key} is written into the compose file"
    flower = services["flower"]
    assert "--local-only" not in flower["command"]
    assert {"TAGGER_FLOWER_USER", "TAGGER_FLOWER_PASSWORD"} <= set(flower["environment"])


def test_every_tagger_setting_named_exists():
    known = {f"TAGGER_{name.upper()}" for name in Settings.model_fields}
    for path in (COMPOSE, ENV_EXAMPLE, DOCKERFILE):
        unknown = set(TAGGER_NAME.findall(path.read_text(encoding="utf-8"))) - known
        assert not unknown, f"{path.name} uses settings that do not exist: {sorted(unknown)}"


def test_images_and_commands_exist(services):
    targets = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", DOCKERFILE.read_text(), re.MULTILINE | re.IGNORECASE))
    for name, service in services.items():
        build = service.get("build")
        if build:
            assert build.get("target") in targets, f"{name}: no Dockerfile stage {build.get('target')!r}"
            command = service.get("command")
            if command:  # the images' entrypoint is `tagger`
                assert command[0] in cli.list_commands(click.Context(cli)), \
                    f"{name}: `tagger {command[0]}` does not exist"
    assert "ENTRYPOINT [\"tagger\"]" in DOCKERFILE.read_text()


def test_every_image_copies_every_package_the_project_installs():
    """A package the Dockerfile forgets is an image whose `tagger` cannot import."""
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.removesuffix("*") for pattern in include}
    stages = DOCKERFILE.read_text().split("\nFROM ")
    installing = [stage for stage in stages if "pip install" in stage]
    assert len(installing) == 2  # the build stage of the cpu image, and the gpu image
    for stage in installing:
        copied = set(re.findall(r"^COPY (\w+) \./\1$", stage, re.M))
        assert packages <= copied, f"not copied: {sorted(packages - copied)}"


def test_worker_and_beat_have_healthchecks_by_tagger_health(services):
    for name, node in (("worker", "gpu0@%h"), ("worker-cpu", "cpu@%h")):
        check = services[name].get("healthcheck", {})
        assert check.get("test") == ["CMD", "tagger", "health", "--node", node], name
        assert check.get("start_period"), f"{name}: a worker loads its model before it answers"
        assert node in services[name]["command"], f"{name}: the node name checked is its own"
    assert services["beat"]["healthcheck"]["test"] == ["CMD", "tagger", "health", "--beat"]
    assert "--purge_offline_workers=60" in services["flower"]["command"]
    assert services["metrics"]["healthcheck"]["test"][-1].count("/healthz") == 1


def test_monitoring_profile_is_provisioned(services):
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert prometheus["profiles"] == ["monitoring"] and grafana["profiles"] == ["monitoring"]
    mounts = {str(v).split(":")[0]: str(v).split(":")[1] for v in prometheus["volumes"] + grafana["volumes"]}
    for source in ("./deploy/prometheus", "./deploy/grafana/provisioning", "./deploy/grafana/dashboards"):
        assert (ROOT / source).is_dir(), source
        assert source in mounts, source
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert mounts["./deploy/prometheus"] == "/etc/prometheus"
    for rules in config["rule_files"]:
        assert (ROOT / "deploy/prometheus" / rules).exists(), rules
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["tagger"]["static_configs"][0]["targets"] == ["metrics:9808"]
    worker_sd = jobs["tagger-worker"]["dns_sd_configs"][0]
    for name in worker_sd["names"]:  # every worker service serves its counters where Prometheus looks
        env = services[name]["environment"]
        assert int(env["TAGGER_WORKER_METRICS_PORT"]) == worker_sd["port"], name
        assert env["TAGGER_WORKER_METRICS_ADDRESS"] == "0.0.0.0", name
        assert not any(str(p).endswith(f":{worker_sd['port']}") for p in services[name].get("ports", [])), name
    datasource = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/repo-tagger.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == mounts["./deploy/grafana/dashboards"]
    dashboards = list((ROOT / "deploy/grafana/dashboards").glob("*.json"))
    assert dashboards
    for path in dashboards:
        dashboard = json.loads(path.read_text())
        assert dashboard["panels"]
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] == uid, panel["title"]
            assert all(t["expr"] for t in panel["targets"]), panel["title"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")


def test_compose_config_is_valid_for_docker_compose():
    """`docker compose config` where the client has the compose plugin (not on every machine)."""
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("no `docker compose` client here")
    env = {**os.environ, **{k: "x" for k in ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "TAGGER_FLOWER_USER",
                                             "TAGGER_FLOWER_PASSWORD", "GRAFANA_ADMIN_PASSWORD")}}
    checked = subprocess.run([docker, "compose", "-f", str(COMPOSE), "--env-file", str(ENV_EXAMPLE), "--profile",
                              "monitoring", "--profile", "cpu", "config", "--quiet"], capture_output=True, text=True,
                             env=env, cwd=ROOT)
    assert checked.returncode == 0, checked.stderr
