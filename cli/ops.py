"""Day-to-day operations: scheduled refresh (beat), Flower, our Prometheus metrics."""

from __future__ import annotations

import os
import socket
import sys

import click
from prometheus_client import CollectorRegistry, start_http_server

from cli.base import settings_with
from producer.beat import run_beat
from producer.metrics import PipelineCollector
from tagger.errors import ConfigError, InputError
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


@click.command()
@click.option("--port", type=click.IntRange(1, 65535), default=5555, show_default=True)
@click.option("--address", help="Interface to listen on [default: 127.0.0.1]; 0.0.0.0 inside a container.")
@click.option("--local-only", is_flag=True, help="Allow running without credentials: listens on 127.0.0.1 only.")
def flower(port: int, address: str | None, local_only: bool) -> None:
    """Serve Celery's Flower (workers, tasks; Prometheus metrics at /metrics), behind basic auth.

    Credentials: TAGGER_FLOWER_USER and TAGGER_FLOWER_PASSWORD. Without them Flower refuses to start,
    unless --local-only. Queue depth and job states are not Flower's: see `tagger metrics`.
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
    code = app.start(argv=["flower", f"--port={port}", f"--address={address or '127.0.0.1'}"])
    sys.exit(code or 0)


@click.command()
@click.option("--port", type=click.IntRange(1, 65535), default=9808, show_default=True)
@click.option("--address", default="127.0.0.1", show_default=True,
              help="Interface to listen on; 0.0.0.0 inside a container.")
def metrics(port: int, address: str) -> None:
    """Serve Prometheus metrics at /metrics: queue depth, repos by job state, dead letters, tag rate.

    \b
    tagger_queue_depth{queue}          batches waiting (tagging queue, maintenance queue)
    tagger_repos{state}                queued, done, failed, dead, untracked (never enqueued)
    tagger_repos_tagged                repos with a result
    tagger_dead_letters                repos in the dead-letter table
    tagger_tag_rate_per_second         results written per second, last 60 s
    tagger_database_up, tagger_broker_up
    Each scrape queries PostgreSQL and Redis afresh.
    """
    registry = CollectorRegistry()
    registry.register(PipelineCollector(settings_with()))
    try:
        _server, thread = start_http_server(port, addr=address, registry=registry)
    except OSError as exc:
        raise port_taken(address, port, exc) from exc
    click.echo(f"metrics on http://{address}:{port}/metrics", err=True)
    thread.join()
