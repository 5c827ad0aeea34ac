"""The structlog JSON events of a process's log file (Celery's banner and the like are skipped)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def log_events(path: Path, event: str | None = None) -> list[dict[str, Any]]:
    """Every JSON log line of ``path``, or only those of ``event``; none while the file does not exist."""
    events: list[dict[str, Any]] = []
    if not path.exists():
        return events
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event is None or record.get("event") == event:
            events.append(record)
    return events
