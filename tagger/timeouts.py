"""A wall-clock limit for backend calls.

GPU workers run Celery's solo pool (CUDA cannot survive a fork), where Celery's own time limits do
not apply. SIGALRM interrupts the Python loop that drives llama.cpp or vLLM between decoding steps.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from tagger.errors import BackendTimeout

T = TypeVar("T")


def call_with_timeout(seconds: float, fn: Callable[..., T], *args: Any) -> T:
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        return fn(*args)  # signals only reach the main thread; threads run unbounded

    def _expired(_signum: int, _frame: Any) -> None:
        raise BackendTimeout(f"backend call exceeded {seconds:g}s")

    previous = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn(*args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
