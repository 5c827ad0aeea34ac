"""Day-to-day operations: scheduled refresh (beat), Flower, our Prometheus metrics, health."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading

import click
from prometheus_client import CollectorRegistry

from cli.settings import settings_with
from producer.beat import run_beat
from producer.health import PING_TIMEOUT_S, check_health
from producer.metrics import PipelineCollector
from tagger.errors import ConfigError, InputError
from tagger.metrics_http import serve_metrics
from workers.contract import create_app

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def port_taken(address: str, port: int, exc: OSError) -> InputError:
    return InputError(f"cannot listen on {address}:{port}: {exc.strerror or exc}: pass another --port (or "
                      "--address), or stop the process that holds it")


def check_port_free(address: str, port: int) -> None:
    """Fail before starting a server whose port is taken, instead of deep inside it."""
    try:
        infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise InputError(f"cannot listen on {address}:{port}: {exc.strerror}") from exc
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(sockaddr)
        except OSError as exc:
            raise port_taken(address, port, exc) from exc


@click.command()
def beat() -> None:
    """Run Celery beat: the stale refresh every TAGGER_REFRESH_INTERVAL_S, the sweep every TAGGER_SWEEP_INTERVAL_S.

    \b
    Start one (the compose service `beat`). A second one started by mistake waits as a standby
    (Redis lock, TTL TAGGER_BEAT_LOCK_TTL_S) and takes over if the first dies; the refresh and
    the sweep also take a PostgreSQL advisory lock, so no repo is ever enqueued twice. This
    process also runs the scheduled tasks themselves (a maintenance queue), never the GPU workers.
    Exit status 1 when leadership was lost: let a supervisor restart it.
    """
    settings = settings_with()
    sys.exit(run_beat(settings, settings.log_level))


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--port", type=click.IntRange(1, 65535), default=5555, show_default=True)
@click.option("--address", help="Interface to listen on [default: 127.0.0.1]; 0.0.0.0 inside a container.")
@click.option("--local-only", is_flag=True, help="Allow running without credentials: listens on 127.0.0.1 only.")
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
def flower(port: int, address: str | None, local_only: bool, flower_args: tuple[str, ...]) -> None:
    """Serve Celery's Flower (workers, tasks; Prometheus metrics at /metrics), behind basic auth.

    \b
    Credentials: TAGGER_FLOWER_USER and TAGGER_FLOWER_PASSWORD. Without them Flower refuses to start,
    unless --local-only. Queue depth and job states are not Flower's: see `tagger metrics`.
    Flower's own options follow, e.g. `tagger flower --purge_offline_workers=60 --max_tasks=50000`
    (forget workers offline for a minute; keep more tasks in memory).
    A batch that dead-lettered repos ends FAILURE with exception DeadLettered (naming them; its other
    repos are tagged): filter the tasks on FAILURE to find them. Sent events are on: Flower shows
    when each batch was sent, hence how long it waited.
    """
    settings = settings_with()
    user, password = settings.flower_user, settings.flower_password
    if local_only:
        if address is not None and address not in LOOPBACK:
            raise click.UsageError(f"--local-only listens on 127.0.0.1 only, not {address}")
        address = "127.0.0.1"
    elif not (user and password):
        raise ConfigError(
            "refusing to start Flower without credentials: set TAGGER_FLOWER_USER and TAGGER_FLOWER_PASSWORD, "
            "or pass --local-only (then it listens on 127.0.0.1 only)"
        )
    if ":" in user or "," in user or "," in password:
        raise ConfigError("TAGGER_FLOWER_USER may not contain ':' or ',', nor TAGGER_FLOWER_PASSWORD ','")
    # Through Flower's environment, not its command line: a password in argv is visible to every user.
    os.environ.pop("FLOWER_UNAUTHENTICATED_API", None)
    if user and password:
        os.environ["FLOWER_BASIC_AUTH"] = f"{user}:{password}"
    else:
        os.environ.pop("FLOWER_BASIC_AUTH", None)

    check_port_free(address or "127.0.0.1", port)
    app = create_app(settings)
    click.echo(f"flower on http://{address or '127.0.0.1'}:{port}/ "
               f"({'basic auth' if user and password else 'no auth, local only'})", err=True)
    for arg in flower_args:
        if arg.split("=", 1)[0].lstrip("-") in ("basic_auth", "auth", "unix_socket", "address", "port"):
            raise click.UsageError(f"{arg.split('=', 1)[0]}: set by `tagger flower` itself (credentials through "
                                   "TAGGER_FLOWER_USER/PASSWORD, never argv)")
    code = app.start(argv=["flower", f"--port={port}", f"--address={address or '127.0.0.1'}", *flower_args])
    sys.exit(code or 0)


@click.command()
@click.option("--port", type=click.IntRange(1, 65535), default=9808, show_default=True)
@click.option("--address", default="127.0.0.1", show_default=True,
              help="Interface to listen on; 0.0.0.0 inside a container.")
def metrics(port: int, address: str) -> None:
    """Serve the pipeline's state to Prometheus: /metrics, and /healthz (database and broker).

    \b
    tagger_repos{state}                   repos by job state: queued, done, failed, dead, untracked
    tagger_queue_depth{queue}             batches waiting (tagging queue, maintenance queue)
    tagger_queue_high_water               TAGGER_QUEUE_HIGH_WATER
    tagger_workers_online                 Celery workers answering a ping (asked every 5 s, apart from scrapes)
    tagger_run_enqueued|tagged|pending{run,kind}   the newest runs' progress
    tagger_canary_pending{run}            canaries not finished (neither promoted nor rolled back)
    tagger_database_up, tagger_broker_up
    Each scrape queries PostgreSQL and Redis afresh. Counters and histograms of the work done (repos
    tagged, retries, dead letters, batch and queue-wait times) come from each worker's own /metrics:
    TAGGER_WORKER_METRICS_PORT. Rates are PromQL's: rate(tagger_repos_tagged_total[5m]).
    """
    collector = PipelineCollector(settings_with())
    registry = CollectorRegistry()
    registry.register(collector)
    try:
        server = serve_metrics(address, port, registry, collector.health)
    except OSError as exc:
        raise port_taken(address, port, exc) from exc
    click.echo(f"metrics on http://{address}:{port}/metrics (health: /healthz)", err=True)
    try:
        threading.Event().wait()
    finally:
        server.shutdown()
        collector.workers.stop()


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object: healthy, each check (database, broker, "
              "workers: ok, detail), the nodes that answered.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(0.1, 60), default=PING_TIMEOUT_S, show_default=True,
              help="Seconds to wait for the workers' answers.")
@click.option("--node", help="This Celery node must answer, instead of any worker of TAGGER_QUEUE: a worker's own "
              "healthcheck (`--node 'gpu0@%h'`; %h: this host's name).")
@click.option("--beat", "beat_", is_flag=True, help="This host's `tagger beat` instead of the workers: the leader "
              "answers a ping, or another beat leads (this one is a standby). Beat's own healthcheck.")
@click.option("--no-workers", is_flag=True, help="Check the database and broker only (a producer's or beat's "
              "view: no worker needed).")
def health(as_json: bool, timeout_s: float, node: str | None, beat_: bool, no_workers: bool) -> None:
    """Can the pipeline work: the database, the broker, and at least one worker answering a ping.

    Exit status 0 when every check passes, 1 otherwise: the compose healthcheck of the worker and beat.
    """
    settings = settings_with()
    if node is not None:
        node = node.replace("%h", socket.gethostname())
    report = check_health(settings, create_app(settings), workers=not no_workers, node=node, beat=beat_,
                          timeout_s=timeout_s)
    if as_json:
        click.echo(json.dumps(report.as_json()))
    else:
        for name, check in report.checks.items():
            click.echo(f"{name:<9} {'ok' if check.ok else 'FAIL':<5} {check.detail}")
        for name in report.workers:
            click.echo(f"          worker {name}")
    sys.exit(0 if report.healthy else 1)
