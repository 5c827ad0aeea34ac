"""The exporter's watch of the workers: a scrape reads the last ping's answer instead of waiting out a
broadcast ping's whole timeout."""

from __future__ import annotations

import threading
from typing import Any, cast

from celery import Celery

from producer.metrics import WorkerWatch
from tests.support.processes import wait_until


class _Inspect:
    def __init__(self, app: _FakeApp) -> None:
        self.app = app

    def active_queues(self) -> dict[str, list[dict[str, str]]]:
        self.app.pings += 1
        self.app.answered.wait()  # a broadcast ping: its answer comes when its timeout is over
        return {name: [{"name": "tagging"}] for name in self.app.nodes}


class _Control:
    def __init__(self, app: _FakeApp) -> None:
        self.app = app

    def inspect(self, timeout: float) -> _Inspect:
        return _Inspect(self.app)


class _FakeApp:
    def __init__(self) -> None:
        self.nodes = ["gpu0@host"]
        self.pings = 0
        self.answered = threading.Event()
        self.control = _Control(self)


def test_the_first_read_waits_for_the_first_answer_later_reads_do_not_wait_for_a_ping() -> None:
    app = _FakeApp()
    watch = WorkerWatch(cast(Celery, app), "tagging", interval_s=0.01)
    first: list[Any] = []
    reader = threading.Thread(target=lambda: first.append(watch.online()))
    reader.start()
    wait_until(lambda: app.pings == 1, timeout=10, what="the first ping")
    assert not first  # nothing to read before the first answer
    app.answered.set()
    reader.join(timeout=10)
    assert first == [["gpu0@host"]]

    app.answered.clear()  # the next ping hangs: a read still answers at once, with the last answer
    wait_until(lambda: app.pings == 2, timeout=10, what="the next ping")
    assert watch.online() == ["gpu0@host"]

    app.nodes = ["gpu0@host", "gpu1@host"]
    app.answered.set()
    wait_until(lambda: watch.online() == ["gpu0@host", "gpu1@host"], timeout=10, what="the new worker seen")
    watch.stop()
