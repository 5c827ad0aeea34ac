"""A wall-clock limit for backend calls.

Celery's own time limits do not apply to the pools GPU workers run (solo, threads). The limit
interrupts the Python loop that drives llama.cpp or vLLM between decoding steps: SIGALRM in the main
thread; in another thread (the threads pool), a watchdog raises the error in the calling thread
through ``PyThreadState_SetAsyncExc``, which the interpreter delivers at the same points a signal
handler would run. Neither can stop a single long C call: they stop the loop around it.
"""

from __future__ import annotations

import ctypes
import signal
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from tagger.errors import BackendTimeout

T = TypeVar("T")


def call_with_timeout(seconds: float, fn: Callable[..., T], *args: Any) -> T:
    if seconds <= 0:
        return fn(*args)
    if threading.current_thread() is threading.main_thread():
        return _with_alarm(seconds, fn, *args)
    return _with_watchdog(seconds, fn, *args)


def _with_alarm(seconds: float, fn: Callable[..., T], *args: Any) -> T:
    def _expired(_signum: int, _frame: Any) -> None:
        raise BackendTimeout(f"backend call exceeded {seconds:g}s")

    previous = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn(*args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class _Expired(BaseException):
    """Raised asynchronously in the calling thread; a class, as PyThreadState_SetAsyncExc needs.
    A BaseException, so that the backend's own ``except Exception`` cannot swallow it."""


def _with_watchdog(seconds: float, fn: Callable[..., T], *args: Any) -> T:
    caller = threading.get_ident()
    state = threading.Lock()  # the call ends or the watchdog fires, never both
    finished = False

    def _expire() -> None:
        with state:
            if not finished:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(caller), ctypes.py_object(_Expired))

    watchdog = threading.Timer(seconds, _expire)
    watchdog.daemon = True
    try:
        watchdog.start()
        try:
            return fn(*args)
        finally:
            with state:
                finished = True
            watchdog.cancel()
    except _Expired:
        raise BackendTimeout(f"backend call exceeded {seconds:g}s") from None
