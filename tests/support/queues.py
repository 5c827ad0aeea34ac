"""What sits in a Redis queue: the batches of the tag_batch messages waiting there."""

from __future__ import annotations

import base64
import json

import redis

from tests.support.services import REDIS_URL


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


def _decode(item: bytes) -> tuple[list[str], int | None]:
    message = json.loads(item)
    body = base64.b64decode(message["body"]) if message["properties"].get("body_encoding") == "base64" \
        else message["body"]
    args, kwargs, _embed = json.loads(body)
    run_id = args[1] if len(args) > 1 else kwargs.get("run_id")
    return list(args[0]), run_id


def queued_messages(queue: str, url: str = REDIS_URL) -> list[tuple[list[str], int | None]]:
    """(batch, run id) of each tag_batch message waiting in ``queue``, oldest first."""
    client = redis.Redis.from_url(url)
    try:
        return [_decode(item) for item in reversed(client.lrange(queue, 0, -1))]
    finally:
        client.close()


def take_message(queue: str, url: str = REDIS_URL) -> tuple[list[str], int | None] | None:
    """Take the oldest message off ``queue`` as a worker would (None when it is empty)."""
    client = redis.Redis.from_url(url)
    try:
        item = client.rpop(queue)
    finally:
        client.close()
    return _decode(item) if item is not None else None
