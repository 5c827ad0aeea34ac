"""Helpers for the operations tests: what sits in a Redis queue, free ports, JSON log lines."""

from __future__ import annotations

import base64
import json
import socket
from pathlib import Path
from typing import Any

import redis

from tests.conftest import REDIS_URL


def queued_batches(queue: str, url: str = REDIS_URL) -> list[list[str]]:
    """The repo-id batches of the tag_batch messages waiting in ``queue`` (oldest first)."""
    client = redis.Redis.from_url(url)
    try:
        raw = client.lrange(queue, 0, -1)
    finally:
        client.close()
    batches = []
    for item in reversed(raw):  # kombu LPUSHes, workers BRPOP: the oldest is at the tail
        message = json.loads(item)
        body = base64.b64decode(message["body"]) if message["properties"].get("body_encoding") == "base64" \
            else message["body"]
        args, _kwargs, _embed = json.loads(body)
        batches.append(list(args[0]))
    return batches


def queued_ids(queue: str, url: str = REDIS_URL) -> list[str]:
    return [repo_id for batch in queued_batches(queue, url) for repo_id in batch]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def json_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects among a log file's lines (Celery's banner and the like are skipped)."""
    lines = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return lines


def events(path: Path, name: str) -> list[dict[str, Any]]:
    return [line for line in json_lines(path) if line.get("event") == name] if path.exists() else []
