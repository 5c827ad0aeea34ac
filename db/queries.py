"""What cli/demo.py still imports from before db/ was split by area; goes with the demo's move to the
embedded servers (issue 17). New code imports from the module of its area."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from sqlalchemy.engine import Connection

from db import jobs
from db.jobs import status_counts
from db.taxonomy import load_taxonomy

__all__ = ["load_taxonomy", "repo_outcomes", "status_counts"]


def repo_outcomes(conn: Connection, ids: Sequence[str]) -> list[dict[str, Any]]:
    return [asdict(row) for row in jobs.repo_outcomes(conn, ids)]
