"""`tagger import`: JSON Lines of repos → the repos table, bad lines reported, good lines kept."""

from __future__ import annotations

import codecs
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from db.engine import transaction
from db.repos import upsert_repos
from tagger.errors import InputError
from tagger.ids import validate_repo_id

CHUNK_ROWS = 500
CHUNK_BYTES = 32 * 1024 * 1024  # a chunk of huge READMEs is written early, not held in memory


@dataclass
class ImportReport:
    imported: int = 0
    errors: list[str] = field(default_factory=list)  # "line N: why"
    warnings: list[str] = field(default_factory=list)
    duplicates: int = 0  # lines whose id an earlier line of the same file had: the later line wins
    _first_line: dict[str, int] = field(default_factory=dict, repr=False)

    def seen(self, repo_id: str, number: int) -> None:
        first = self._first_line.setdefault(repo_id, number)
        if first != number:
            self.duplicates += 1
            self.warnings.append(f"line {number}: repo {repo_id!r} already on line {first}: this later line wins")


def _clean_text(text: str) -> str:
    """PostgreSQL text cannot hold NUL, and lone surrogates cannot be encoded: drop or replace them."""
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")


def parse_line(raw: bytes, number: int, report: ImportReport) -> dict[str, str] | None:
    if number == 1:
        raw = raw.removeprefix(codecs.BOM_UTF8)  # written by some Windows editors; not part of the JSON
    try:
        line = raw.decode("utf-8")
        bad_utf8 = False
    except UnicodeDecodeError:
        line, bad_utf8 = raw.decode("utf-8", "replace"), True
    if not line.strip():
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        report.errors.append(f"line {number}: not valid JSON ({exc.msg} at column {exc.colno})")
        return None
    if not isinstance(obj, dict):
        report.errors.append(f"line {number}: expected a JSON object, got {type(obj).__name__}")
        return None
    try:
        if "id" not in obj:
            raise InputError("missing 'id'")
        repo_id = validate_repo_id(obj["id"])
        if bad_utf8 and "\ufffd" in repo_id:
            raise InputError("repo id is not valid UTF-8")
        readme = obj.get("readme")
        if not isinstance(readme, str):
            raise InputError("'readme' must be a string")
        name = obj.get("name") or ""
        if not isinstance(name, str):
            raise InputError("'name' must be a string")
    except InputError as exc:
        report.errors.append(f"line {number}: {exc}")
        return None
    cleaned = _clean_text(readme)
    if bad_utf8 or cleaned != readme:
        report.warnings.append(f"line {number}: repo {repo_id!r}: invalid UTF-8 or NUL bytes replaced in README")
    report.seen(repo_id, number)
    return {"id": repo_id, "name": _clean_text(name), "readme": cleaned}


def iter_rows(stream: BinaryIO, report: ImportReport) -> Iterator[dict[str, str]]:
    for number, raw in enumerate(stream, start=1):
        row = parse_line(raw, number, report)
        if row is not None:
            yield row


STDIN = "-"
COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ": "xz", b"(\xb5/\xfd": "zstd", b"PK\x03\x04": "zip"}


def _open_source(path: Path | str) -> tuple[BinaryIO, int | None]:
    """The file to read (standard input for ``-``; /dev/stdin and named pipes work as files), and its size
    when it has one (for the progress bar)."""
    if str(path) == STDIN:
        return sys.stdin.buffer, None
    source = Path(path)
    if not source.exists():
        raise InputError(f"no such file: {source}")
    if source.is_dir():
        raise InputError(f"{source} is a directory: give a JSON Lines file")
    stream = open(source, "rb")  # noqa: SIM115  closed by the caller
    return stream, source.stat().st_size if source.is_file() else None


def _refuse_compressed(stream: BinaryIO, path: Path | str) -> None:
    if not stream.seekable():
        return
    head = stream.read(8)
    stream.seek(0)
    for magic, kind in COMPRESSED.items():
        if head.startswith(magic):
            raise InputError(f"{path} is {kind}-compressed: decompress it first, e.g. zcat FILE | tagger import -")


def import_repos(database_url: str, path: Path | str, progress: bool = False) -> ImportReport:
    """Import JSON Lines from ``path`` (``-``: standard input). Chunks are committed as they go: an
    interrupted import keeps what it committed, and running it again is harmless (an upsert)."""
    from tqdm import tqdm

    report = ImportReport()
    stream, total = _open_source(path)
    with stream, tqdm(
        total=total, unit="B", unit_scale=True, desc="import", disable=None if progress else True
    ) as bar:
        _refuse_compressed(stream, path)
        chunk: list[dict[str, str]] = []
        size = 0

        def flush() -> None:
            nonlocal chunk, size
            if chunk:
                with transaction(database_url) as conn:
                    report.imported += upsert_repos(conn, chunk)
            chunk, size = [], 0

        for row in iter_rows(stream, report):
            chunk.append(row)
            size += len(row["readme"])
            if len(chunk) >= CHUNK_ROWS or size >= CHUNK_BYTES:
                flush()
                if stream.seekable():
                    bar.n = stream.tell()
                    bar.refresh()
        flush()
        if total is not None:
            bar.n = total
            bar.refresh()
    report.imported = len(report._first_line)  # repos, not lines: a repeated id is one repo
    return report
