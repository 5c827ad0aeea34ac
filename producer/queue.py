"""What the producer and `tagger status` need to know of the broker: how deep the queue is."""

from __future__ import annotations

from functools import lru_cache

import redis

from tagger.errors import BrokerUnavailable

# Kombu's Redis transport keeps one list per priority step: "queue", "queue\x06\x163", ...
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


@lru_cache(maxsize=4)
def _client(broker_url: str) -> redis.Redis:
    return redis.Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=5)


def queue_depth(broker_url: str, queue: str) -> int:
    """Messages (batches) waiting in the queue, not counting those a worker holds."""
    if not broker_url.startswith(("redis://", "rediss://", "unix://")):
        return 0  # in-process broker of the demo: nothing waits outside the process
    try:
        pipe = _client(broker_url).pipeline(transaction=False)
        for suffix in _PRIORITY_SUFFIXES:
            pipe.llen(queue + suffix)
        return int(sum(pipe.execute()))
    except redis.RedisError as exc:
        raise BrokerUnavailable(f"cannot read queue depth from {broker_url}: {exc}") from exc
