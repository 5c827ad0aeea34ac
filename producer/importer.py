"""`tagger import`: JSON Lines of repos → the repos table, bad lines reported, good lines kept."""

from __future__ import annotations

import codecs
import json
import re
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import orjson

from db.engine import session
from db.repos import ImportedChunk, ImportRow, RepoImport
from tagger.errors import InputError
from tagger.ids import validate_repo_id

CHUNK_ROWS = 2000  # one COPY and a few statements per chunk
CHUNK_BYTES = 16 * 1024 * 1024  # a chunk of huge READMEs is written early, not held in memory
DEFAULT_README_MAX_BYTES = 1024 * 1024
READ_PIECE = 1024 * 1024  # how much of an oversized line is read at a time
# A file is read a MiB at a time rather than 8 KiB: each read lets the writer thread take the GIL, and
# taking it back is the reading thread's wait.
READ_BUFFER = 1024 * 1024
_SPECIAL = re.compile(rb'[\\"]')  # what changes the scanner's state inside and outside JSON strings
# A string's content, up to its end or an escape cut short.
_STRING_REST = re.compile(rb'(?:[^"\\]+|\\u[0-9a-fA-F]{4}|\\[^u])*')
_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_UNICODE_ESCAPE = re.compile(rb"\\u[0-9a-fA-F]{4}")


MAX_MESSAGES = 1000  # error and warning lines kept for the report; past that, counted only


@dataclass
class ImportReport:
    imported: int = 0  # repos: an id on several lines is one
    truncated: int = 0  # READMEs longer than the limit: their head was stored, and their original size
    errors: list[str] = field(default_factory=list)  # "line N: why" (the first MAX_MESSAGES)
    warnings: list[str] = field(default_factory=list)  # (the first MAX_MESSAGES)
    duplicates: int = 0  # lines whose id an earlier line of the same file had: the later line wins
    rejected: int = 0  # bad lines, all of them

    def error(self, message: str) -> None:
        self.rejected += 1
        if len(self.errors) < MAX_MESSAGES:
            self.errors.append(message)

    def warn(self, message: str) -> None:
        if len(self.warnings) < MAX_MESSAGES:
            self.warnings.append(message)

    def absorb(self, other: ImportReport) -> None:
        """Add what ``other`` (a later part of the same file) found, after what this report holds."""
        self.imported += other.imported
        self.truncated += other.truncated
        self.duplicates += other.duplicates
        self.rejected += other.rejected
        self.errors += other.errors[:max(0, MAX_MESSAGES - len(self.errors))]
        for message in other.warnings:
            self.warn(message)


def _clean_text(text: str) -> str:
    """PostgreSQL text cannot hold NUL, and lone surrogates cannot be encoded: drop or replace them."""
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")


def read_line(stream: BinaryIO, max_bytes: int) -> tuple[bytes, int]:
    """The next line of ``stream`` (b"" at its end), with every JSON string in it longer than ``max_bytes``
    (a huge README) cut to that many bytes, never inside an escape or a character; and how many bytes
    of text were cut (as decoded: an escape counts as the character it stands for; off by a byte or two
    when the cut splits a surrogate pair). Memory stays within a few times ``max_bytes`` however long the
    line is: a line longer than that is read piece by piece, and the rest of a long string is only
    scanned for where it ends."""
    limit = 2 * max_bytes + READ_PIECE  # a line up to this long is returned whole, parsed as it is
    piece = stream.readline(limit)
    if len(piece) < limit or piece.endswith(b"\n"):
        return piece, 0
    kept = bytearray()
    in_string = False
    string_bytes = dropped = 0

    def add(content: bytes, atomic: bool = False) -> None:
        """Bytes of the current string: kept while it is within max_bytes, else counted and dropped."""
        nonlocal string_bytes, dropped
        room = max_bytes - string_bytes
        string_bytes += len(content)
        if len(content) <= room:
            kept.extend(content)
            return
        dropped += _escape_size(content) if atomic else len(content)
        if room < 0:  # cut already
            return
        if not atomic:
            kept.extend(content[:room])
            dropped -= room
        # The string is cut here, once: not inside a character (a piece may have ended in one).
        trimmed = _incomplete_utf8_tail(kept)
        if trimmed:
            del kept[-trimmed:]
            dropped += trimmed

    while piece:
        pos, end = 0, len(piece)
        carry = b""
        while pos < end:
            if not in_string:
                quote = piece.find(b'"', pos)
                if quote < 0:
                    kept.extend(piece[pos:])
                    break
                kept.extend(piece[pos:quote + 1])
                in_string, string_bytes, pos = True, 0, quote + 1
                continue
            if string_bytes > max_bytes and end - pos > 8:
                # Cut already: only its end is sought, and its size counted, at the regex engine's pace.
                # The piece's last bytes are left to the loop below, which carries an escape split
                # between two pieces over.
                rest = _STRING_REST.match(piece, pos, end - 8)
                stop = rest.end() if rest else pos
                skipped = piece[pos:stop]
                string_bytes += len(skipped)
                dropped += _decoded_size(skipped)
                pos = stop
                if piece[pos] == ord('"'):
                    kept.append(ord('"'))
                    in_string, pos = False, pos + 1
                    continue
            match = _SPECIAL.search(piece, pos)
            if match is None:
                add(piece[pos:])
                break
            at = match.start()
            add(piece[pos:at])
            if piece[at] == ord('"'):
                kept.append(ord('"'))
                in_string, pos = False, at + 1
                continue
            width = 6 if piece[at + 1:at + 2] == b"u" else 2  # \uXXXX or \n, \", ...
            if at + width > end:  # the escape goes on in the next piece
                carry = piece[at:]
                break
            add(piece[at:at + width], atomic=True)
            pos = at + width
        if piece.endswith(b"\n"):
            break
        following = stream.readline(READ_PIECE)
        if not following:
            kept.extend(carry)
            break
        piece = carry + following
    return bytes(kept), dropped


def _decoded_size(content: bytes) -> int:
    """UTF-8 bytes of the text a piece of JSON string content (whole escapes only) stands for."""
    _, escapes = _ESCAPE.subn(b"", content)
    unicode = _UNICODE_ESCAPE.findall(content)
    return len(content) - (escapes - len(unicode)) - sum(6 - _escape_size(u) for u in unicode)


def _escape_size(escape: bytes) -> int:
    """UTF-8 bytes of the character a JSON escape stands for (each half of a surrogate pair: 2 of its 4)."""
    if len(escape) < 6:
        return 1  # \n, \", \\, ...
    try:
        code = int(escape[2:6], 16)
    except ValueError:
        return len(escape)
    if 0xD800 <= code <= 0xDFFF:
        return 2
    return 1 if code < 0x80 else 2 if code < 0x800 else 3


def _incomplete_utf8_tail(data: bytearray) -> int:
    """How many bytes at the end of ``data`` are the start of a UTF-8 character cut short."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # a lead byte (or ASCII): does its character fit?
            needed = 2 if byte >= 0xC0 else 1
            needed = 3 if byte >= 0xE0 else needed
            needed = 4 if byte >= 0xF0 else needed
            return back if needed > back else 0
    return 0


def parse_line(raw: bytes, number: int, report: ImportReport, max_bytes: int = DEFAULT_README_MAX_BYTES,
               cut: int = 0) -> ImportRow | None:
    """One line as a row of the repos table, or None (a blank line, or an error added to ``report``).
    ``cut``: bytes :func:`read_line` already cut from the line's long strings (its README's)."""
    if number == 1:
        raw = raw.removeprefix(codecs.BOM_UTF8)  # written by some Windows editors; not part of the JSON
    bad_utf8 = False
    try:
        # orjson: several times the standard library's pace, and strict (valid UTF-8, no lone surrogate
        # escapes, no NaN): what it refuses goes to the standard parser, whose messages the report gives
        # and which takes what it tolerates (invalid UTF-8 replaced and warned about). An integer id past
        # 64 bits, which orjson reads as a float, is read by the standard parser too: as the integer.
        obj = orjson.loads(raw)
        strict = not (isinstance(obj, dict) and isinstance(obj.get("id"), float))
    except orjson.JSONDecodeError:
        strict = False
    if not strict:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            line, bad_utf8 = raw.decode("utf-8", "replace"), True
        if not line.strip():
            return None
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            report.error(f"line {number}: not valid JSON ({exc.msg} at column {exc.colno})")
            return None
        del line
    if not isinstance(obj, dict):
        report.error(f"line {number}: expected a JSON object, got {type(obj).__name__}")
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
        report.error(f"line {number}: {exc}")
        return None
    del obj  # the README is the only copy of the line's text that stays
    try:
        encoded = readme.encode("utf-8")  # fails on a lone surrogate (an escape the standard parser let in)
        clean = not bad_utf8 and b"\x00" not in encoded
    except UnicodeEncodeError:
        clean = False
    if not clean:
        report.warn(f"line {number}: repo {repo_id!r}: invalid UTF-8 or NUL bytes replaced in README")
        encoded = _clean_text(readme).encode("utf-8")
    del readme
    size = len(encoded)
    if size > max_bytes:
        encoded = encoded[:max_bytes].decode("utf-8", "ignore").encode("utf-8")  # never inside a character
    if cut or size > max_bytes:
        report.truncated += 1
    # The size as imported: of the text, after NULs and invalid UTF-8 were replaced; for a line read in
    # pieces, as written in the file (escapes counted as written). Kept only for a README stored cut.
    full = size + cut
    return ImportRow(number, repo_id, _clean_text(name), encoded, full if full > len(encoded) else None)


def iter_rows(stream: BinaryIO, report: ImportReport,
              max_bytes: int = DEFAULT_README_MAX_BYTES) -> Iterator[ImportRow]:
    number = 0
    while True:
        raw, cut = read_line(stream, max_bytes)
        if not raw:
            return
        number += 1
        row = parse_line(raw, number, report, max_bytes, cut)
        del raw
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
    stream = open(source, "rb", buffering=READ_BUFFER)  # noqa: SIM115  closed by the caller
    return stream, source.stat().st_size if source.is_file() else None


def _refuse_compressed(stream: BinaryIO, path: Path | str) -> None:
    if not stream.seekable():
        return
    head = stream.read(8)
    stream.seek(0)
    for magic, kind in COMPRESSED.items():
        if head.startswith(magic):
            raise InputError(f"{path} is {kind}-compressed: decompress it first, e.g. zcat FILE | tagger import -")


def import_repos(database_url: str, path: Path | str, progress: bool = False,
                 readme_max_bytes: int = DEFAULT_README_MAX_BYTES) -> ImportReport:
    """Import JSON Lines from ``path`` (``-``: standard input). Chunks are COPYed and committed as they
    go: an interrupted import keeps what it committed, and running it again is harmless (an upsert).
    Memory stays flat in the file's size: two chunks at a time, the ids seen so far kept by the server
    (db.repos.RepoImport), which also finds the lines that repeat an earlier id. A README
    longer than ``readme_max_bytes`` is stored cut to that (its original size beside it): only its head
    is ever read, and memory stays bounded whatever one line holds."""
    from tqdm import tqdm

    report = ImportReport()
    stream, total = _open_source(path)
    # Two threads: this one reads and parses a chunk while the other has the server write the one before
    # (the server's work and the parsing each take one core; one after the other, each waited for the
    # other). At most two chunks are held: the one written, the one parsed.
    with stream, tqdm(
        total=total, unit="B", unit_scale=True, desc="import", disable=None if progress else True
    ) as bar, session(database_url) as conn, ThreadPoolExecutor(1, thread_name_prefix="import") as writer:
        _refuse_compressed(stream, path)
        importer = RepoImport(conn)
        # What was found in the lines of the chunk being parsed, and of the one being written: added to
        # ``report`` in line order once that chunk is written (its repeated ids are found by the server).
        part = ImportReport()
        written: tuple[Future[ImportedChunk], ImportReport] | None = None
        chunk: list[ImportRow] = []
        size = 0

        def settle() -> None:
            nonlocal written
            if written is not None:
                future, found = written
                result = future.result()
                report.absorb(found)
                report.imported += result.new_ids
                report.duplicates += result.duplicates
                for number, repo_id, first in result.duplicate_sample:
                    report.warn(f"line {number}: repo {repo_id!r} already on line {first}: this later line wins")
                written = None

        def flush() -> None:
            nonlocal chunk, size, part, written
            settle()
            # As many repeats as messages may still be kept (the report keeps the first MAX_MESSAGES).
            sample = max(0, MAX_MESSAGES - len(report.warnings) - len(part.warnings))
            written = writer.submit(importer.write, chunk, sample), part
            chunk, size, part = [], 0, ImportReport()

        try:
            for row in iter_rows(stream, part, readme_max_bytes):
                chunk.append(row)
                size += len(row.readme)
                if len(chunk) >= CHUNK_ROWS or size >= CHUNK_BYTES:
                    flush()
                    if stream.seekable():
                        bar.n = stream.tell()
                        bar.refresh()
            flush()
            settle()
        except BaseException:
            # Interrupted (Ctrl-C) or failed: the chunk being written is committed or not, as it goes, and
            # is not waited on twice.
            if written is not None:
                written[0].cancel()
            raise
        if total is not None:
            bar.n = total
            bar.refresh()
    return report
