"""`tagger import`: JSON Lines of repos → the repos table, bad lines reported, good lines kept."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from db.engine import transaction
from db.queries import upsert_repos
from tagger.errors import InputError
from tagger.ids import validate_repo_id

CHUNK_ROWS = 500
CHUNK_BYTES = 32 * 1024 * 1024  # a chunk of huge READMEs is written early, not held in memory


@dataclass
class ImportReport:
    imported: int = 0
    errors: list[str] = field(default_factory=list)  # "line N: why"
    warnings: list[str] = field(default_factory=list)


def _clean_text(text: str) -> str:
    """PostgreSQL text cannot hold NUL, and lone surrogates cannot be encoded: drop or replace them."""
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")


def parse_line(raw: bytes, number: int, report: ImportReport) -> dict[str, str] | None:
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
    return {"id": repo_id, "name": _clean_text(name), "readme": cleaned}


def iter_rows(stream: BinaryIO, report: ImportReport) -> Iterator[dict[str, str]]:
    for number, raw in enumerate(stream, start=1):
        row = parse_line(raw, number, report)
        if row is not None:
            yield row


def import_repos(database_url: str, path: Path | str, progress: bool = False) -> ImportReport:
    from tqdm import tqdm

    report = ImportReport()
    source = Path(path)
    if not source.is_file():
        raise InputError(f"no such file: {source}")
    with open(source, "rb") as stream, tqdm(
        total=source.stat().st_size, unit="B", unit_scale=True, desc="import", disable=None if progress else True
    ) as bar:
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
                bar.n = stream.tell()
                bar.refresh()
        flush()
        bar.n = source.stat().st_size
        bar.refresh()
    return report
