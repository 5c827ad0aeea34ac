"""HTTP as the tests read the servers they start (the exporter, workers, Flower, Prometheus)."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request

NOT_ANSWERING = (0, "")


def http_get(url: str, auth: tuple[str, str] | None = None, timeout: float = 10) -> tuple[int, str]:
    """The status and body of a GET (with basic auth when given); :data:`NOT_ANSWERING` when nothing
    answers (a server not listening yet, or gone)."""
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except OSError:
        return NOT_ANSWERING
