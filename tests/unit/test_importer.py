"""One line of `tagger import` as a row: the fast parser (orjson) and the standard one agree on every
line, and what only the standard one takes (invalid UTF-8, lone surrogate escapes, NaN, huge integers)
still comes through, with its warning."""

from __future__ import annotations

import json

import pytest

from db.repos import ImportRow
from producer.importer import MAX_MESSAGES, ImportReport, parse_line


def parse(raw: bytes, max_bytes: int = 1 << 20, number: int = 2) -> tuple[ImportRow | None, ImportReport]:
    report = ImportReport()
    return parse_line(raw, number, report, max_bytes), report


def test_a_clean_line_is_its_utf8_readme_with_no_message():
    row, report = parse(json.dumps({"id": " o/r ", "name": "o/r", "readme": "é😀 \"x\"\n"}).encode())
    assert row == ImportRow(2, "o/r", "o/r", "é😀 \"x\"\n".encode(), None)
    assert (report.errors, report.warnings, report.truncated) == ([], [], 0)


@pytest.mark.parametrize(("raw", "readme"), [
    (b'{"id": "a", "readme": "x\\u0000y"}', "xy"),
    (b'{"id": "a", "readme": "x\\ud800y"}', "x?y"),
    (b'{"id": "a", "readme": "x\xffy"}', "x\ufffdy"),
], ids=["nul", "lone-surrogate", "invalid-utf8"])
def test_text_postgresql_cannot_hold_is_replaced_with_a_warning(raw, readme):
    row, report = parse(raw)
    assert row is not None and row.readme == readme.encode()
    assert report.warnings == ["line 2: repo 'a': invalid UTF-8 or NUL bytes replaced in README"]


def test_what_only_the_standard_parser_takes_is_read_as_it_reads_it():
    row, report = parse(b'{"id": 123456789012345678901234567890, "readme": "r", "stars": NaN}')
    assert row is not None and row.id == "123456789012345678901234567890" and not report.errors
    row, report = parse(b'{"id": 1.5, "readme": "r"}')
    assert row is None and report.errors == ["line 2: repo id must be a string, got float"]


@pytest.mark.parametrize(("raw", "message"), [
    (b'{"id": "a", "readme": ', "line 2: not valid JSON (Expecting value at column 23)"),
    (b"[1]", "line 2: expected a JSON object, got list"),
    (b'{"readme": "r"}', "line 2: missing 'id'"),
    (b'{"id": "a", "readme": 1}', "line 2: 'readme' must be a string"),
    (b'{"id": "a", "readme": "r", "name": 3}', "line 2: 'name' must be a string"),
    (b'{"id": "b\xffd", "readme": "r"}', "line 2: repo id is not valid UTF-8"),
])
def test_bad_lines_get_the_standard_parsers_message(raw, message):
    row, report = parse(raw)
    assert row is None and report.errors == [message] and report.rejected == 1


def test_blank_lines_are_skipped_and_a_bom_on_line_one_is_dropped():
    assert parse(b"  \r\n") == (None, ImportReport())
    row, _ = parse(b'\xef\xbb\xbf{"id": "a", "readme": "r"}\n', number=1)
    assert row is not None and row.id == "a"


def test_a_readme_over_the_limit_is_cut_on_a_character_with_its_size():
    readme = "ab" + "é" * 10  # 22 bytes
    row, report = parse(json.dumps({"id": "a", "readme": readme}).encode(), max_bytes=5)
    assert row is not None and row.readme == "abé".encode() and row.readme_size == 22 and report.truncated == 1
    row, report = parse(json.dumps({"id": "a", "readme": readme}).encode(), max_bytes=22)
    assert row is not None and row.readme_size is None and report.truncated == 0


def test_a_later_part_of_the_file_is_absorbed_after_what_came_before_within_the_caps():
    report, later = ImportReport(), ImportReport()
    for n in range(MAX_MESSAGES - 1):
        report.warn(f"w{n}")
    later.warn("kept")
    later.warn("dropped")
    later.error("e")
    later.truncated = 2
    report.absorb(later)
    assert report.warnings[-1] == "kept" and len(report.warnings) == MAX_MESSAGES
    assert (report.errors, report.rejected, report.truncated) == (["e"], 1, 2)
