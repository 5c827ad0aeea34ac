"""The backend call limit, in the main thread (SIGALRM) and in a worker thread (the threads pool)."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tagger.errors import BackendTimeout
from tagger.timeouts import call_with_timeout


def _python_loop(seconds: float) -> str:
    """Stands in for the loop that drives a model between decoding steps."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass
    return "done"


def _in_a_thread(fn, *args):
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()


@pytest.mark.parametrize("where", ["main thread", "worker thread"])
def test_a_call_past_its_limit_is_interrupted(where):
    started = time.monotonic()
    with pytest.raises(BackendTimeout, match=r"exceeded 0\.2s"):
        if where == "main thread":
            call_with_timeout(0.2, _python_loop, 30)
        else:
            _in_a_thread(call_with_timeout, 0.2, _python_loop, 30)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("where", ["main thread", "worker thread"])
def test_a_call_within_its_limit_returns_and_leaves_nothing_behind(where):
    def calls():
        results = [call_with_timeout(0.3, _python_loop, 0.01) for _ in range(20)]
        _python_loop(0.6)  # past every limit set above: a stray timer would fire here
        return results

    results = calls() if where == "main thread" else _in_a_thread(calls)
    assert results == ["done"] * 20
    assert not [t for t in threading.enumerate() if isinstance(t, threading.Timer)]  # no watchdog left behind


def test_the_backends_own_exception_handlers_cannot_swallow_the_limit():
    def swallowing(seconds):
        try:
            return _python_loop(seconds)
        except Exception:  # what a backend's error translation does
            return "swallowed"

    with pytest.raises(BackendTimeout):
        _in_a_thread(call_with_timeout, 0.2, swallowing, 30)


def test_no_limit_means_no_timer():
    assert _in_a_thread(call_with_timeout, 0, _python_loop, 0.01) == "done"
