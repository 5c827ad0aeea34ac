"""The broker's queues as Redis sees them: depths, and the client that reads them. Redis only, no Celery:
`tagger status` and a metrics scrape read queue depths without loading Celery."""

from __future__ import annotations

from functools import lru_cache

import redis

from tagger.errors import BrokerUnavailable
from tagger.urls import masked, scrub

# Kombu's Redis transport keeps one list per priority step: "queue", "queue\x06\x163", ... A queue's
# depth is the sum of them all.
PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


def is_redis(broker_url: str) -> bool:
    return broker_url.startswith(("redis://", "rediss://", "unix://"))


@lru_cache(maxsize=4)
def broker_client(broker_url: str) -> redis.Redis:
    """A Redis client of the broker (queue depths, beat's leader lock); one per URL and process."""
    try:
        return redis.Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=5)
    except ValueError as exc:
        raise BrokerUnavailable(f"not a Redis broker URL: {masked(broker_url)!r}: {scrub(str(exc), broker_url)}") \
            from None


def queue_depth(broker_url: str, queue: str) -> int:
    """Messages (batches) waiting in the queue, not counting those a worker holds."""
    if not is_redis(broker_url):
        return 0  # a Sentinel URL, which redis-py cannot open: no depth read, no backpressure
    try:
        pipe = broker_client(broker_url).pipeline(transaction=False)
        for suffix in PRIORITY_SUFFIXES:
            pipe.llen(queue + suffix)
        return int(sum(pipe.execute()))
    except redis.RedisError as exc:
        raise BrokerUnavailable(f"cannot read queue depth from {masked(broker_url)}: {scrub(str(exc), broker_url)} "
                                "(is Redis running where TAGGER_BROKER_URL points?)") from exc
