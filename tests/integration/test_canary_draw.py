"""A canary's sample, drawn by the server (db.repos.draw_sample): reproducible from its seed, stable as the
index grows, and the draw its definition (SHA-256 of "<seed>:<id>") gives."""

from __future__ import annotations

import hashlib
import heapq

from db.engine import transaction
from db.repos import draw_sample, upsert_repos

IDS = [f"r{i:04d}" for i in range(1000)]


def _index(url: str, ids: list[str]) -> None:
    with transaction(url) as conn:
        upsert_repos(conn, [{"id": i, "name": i, "readme": f"# {i}"} for i in ids])


def _draw(url: str, n: int, seed: int) -> list[str]:
    with transaction(url) as conn:
        return draw_sample(conn, n, seed)


def test_the_sample_depends_on_the_seed_and_the_index_only(database_url):
    assert _draw(database_url, 5, seed=1) == []  # an empty index
    _index(database_url, IDS)
    sample = _draw(database_url, 50, seed=7)
    expected = heapq.nsmallest(50, IDS, key=lambda i: hashlib.sha256(f"7:{i}".encode()).digest())
    assert sample == sorted(expected) and len(set(sample)) == 50
    assert _draw(database_url, 50, seed=7) == sample
    assert _draw(database_url, 50, seed=8) != sample
    # A bigger index keeps most of the sample: a repo is drawn by its own hash, not its position.
    _index(database_url, [f"s{i}" for i in range(100)])
    assert len(set(_draw(database_url, 50, seed=7)) & set(sample)) >= 40
    assert len(_draw(database_url, 5000, seed=1)) == 1100  # more than the index: all of it
