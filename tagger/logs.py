"""structlog setup: JSON lines when not on a terminal, readable lines on one; stable event names.

Libraries' stdlib logging (Celery, kombu, Alembic) goes through the same renderer, so a log
collector reading a worker's output sees one JSON object per line, whoever wrote it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import structlog

from tagger.urls import scrub

_HANDLER_NAME = "tagger"


class _CurrentStderr:
    """Whatever ``sys.stderr`` is when a line is written, not when logging was configured: a caller that
    swaps it (a test capturing output, Click's runner) gets the lines, and none go to a closed stream."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


class _StderrHandler(logging.StreamHandler):
    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def _mask_urls(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
    """No password of a service URL in any log line, whoever logged it (a driver's message, a traceback)."""
    return {key: scrub(value) if isinstance(value, str) else value for key, value in event.items()}


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    # Imported here, not at the top: structlog (and rich, which its dev renderer loads) is a fifth of a
    # second that `tagger --help` need not pay; every command that logs imports it anyway.
    import structlog

    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info if use_json else structlog.processors.ExceptionPrettyPrinter(),
            _mask_urls,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # One write() per line: print() writes the line and its newline apart, and a line that logging
        # writes from another thread (Celery's, in the threads pool) could land in between.
        logger_factory=structlog.WriteLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    # Libraries log at WARNING and above, rendered like our own lines (the event is their message).
    handler = _StderrHandler()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.contextvars.merge_contextvars,
                structlog.stdlib.add_logger_name,
                structlog.stdlib.add_log_level,
                timestamper,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info if use_json else structlog.processors.ExceptionPrettyPrinter(),
                _mask_urls,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(numeric, logging.WARNING))
