"""Files the product writes: whole or not at all.

An output file is written to a temporary file beside it and renamed into place once complete, so a
failure half-way (the database gone, the disk full, Ctrl-C) leaves the previous file as it was.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from tagger.errors import InputError


def output_path(value: str | os.PathLike[str]) -> Path:
    """A path the user gave for an output file, checked before any work is done: not empty, not a
    directory, in a directory that exists."""
    text = os.fspath(value)
    if not text.strip():
        raise InputError("the output path is empty: give a file name, or leave the option out for standard output")
    path = Path(text)
    if path.is_dir():
        raise InputError(f"{path} is a directory: give a file name inside it")
    if not path.parent.is_dir():
        raise InputError(f"cannot write {path}: directory {path.parent} does not exist")
    return path


def _is_special(path: Path) -> bool:
    """A character device, FIFO or socket (/dev/stdout, /dev/null, a named pipe): written in place, since
    it cannot be replaced by a rename."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return False
    return not stat.S_ISREG(mode)


@contextlib.contextmanager
def atomic_write(path: Path, encoding: str = "utf-8") -> Iterator[TextIO]:
    """A text stream whose content replaces ``path`` only if the block completes; on any error the
    temporary file is removed and ``path`` is untouched. The new file keeps the old one's permissions."""
    try:
        with _replacing(path, encoding) as stream:
            yield stream
    except OSError as exc:
        if exc.filename is None:  # a failed write names no file: say which one
            exc.filename = str(path)
        raise


@contextlib.contextmanager
def _replacing(path: Path, encoding: str) -> Iterator[TextIO]:
    if _is_special(path):
        with open(path, "w", encoding=encoding) as stream:
            yield stream
        return
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding=encoding) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        try:
            os.chmod(temporary, stat.S_IMODE(path.stat().st_mode))
        except FileNotFoundError:
            os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
