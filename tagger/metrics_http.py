"""The one small HTTP server behind every /metrics we serve (each worker process, `tagger metrics`):
/metrics answers Prometheus' text format, /healthz the process's health as JSON (200 or 503), any
other path 404, so that a typo in a scrape or probe configuration shows instead of passing."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

# (healthy, details): details are shown as JSON; they must never hold a secret.
HealthCheck = Callable[[], tuple[bool, Mapping[str, Any]]]


class MetricsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: str, port: int, registry: CollectorRegistry, health: HealthCheck) -> None:
        self.registry = registry
        self.health = health
        super().__init__((address, port), _Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        if path == "/metrics":
            self._answer(200, CONTENT_TYPE_LATEST, generate_latest(self.server.registry))
        elif path == "/healthz":
            healthy, details = self.server.health()
            body = json.dumps({"healthy": healthy, **details}).encode()
            self._answer(200 if healthy else 503, "application/json", body)
        else:
            self._answer(404, "text/plain; charset=utf-8", b"not found: /metrics and /healthz are served here\n")

    def _answer(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # every scrape would be a log line


def serve_metrics(address: str, port: int, registry: CollectorRegistry, health: HealthCheck) -> MetricsServer:
    """Listen now (an OSError if the port is taken) and answer in a daemon thread."""
    server = MetricsServer(address, port, registry, health)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
