"""Output files are whole or absent: tagger.files.atomic_write and output_path."""

from __future__ import annotations

import os
import stat

import pytest

from tagger.errors import InputError
from tagger.files import atomic_write, output_path


def test_a_failure_half_way_leaves_the_previous_file(tmp_path):
    target = tmp_path / "out.jsonl"
    target.write_text("previous\n", encoding="utf-8")
    with pytest.raises(RuntimeError), atomic_write(target) as stream:
        stream.write("half of the new one\n")
        raise RuntimeError("the database went away")
    assert target.read_text(encoding="utf-8") == "previous\n"
    assert os.listdir(tmp_path) == ["out.jsonl"]


def test_a_complete_write_replaces_the_file_with_the_usual_permissions(tmp_path):
    target = tmp_path / "new.jsonl"
    with atomic_write(target) as stream:
        stream.write("new\n")
    assert target.read_text(encoding="utf-8") == "new\n"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600


def test_a_device_is_written_in_place_and_its_errors_name_it():
    with atomic_write(output_path("/dev/null")) as stream:
        stream.write("discarded\n")
    with pytest.raises(OSError) as raised, atomic_write(output_path("/dev/full")) as stream:
        stream.write("x" * 100_000)
    assert raised.value.filename == "/dev/full"


@pytest.mark.parametrize(("path", "message"), [
    ("", "the output path is empty"),
    ("  ", "the output path is empty"),
    ("/", "/ is a directory"),
    ("/no/such/dir/x.jsonl", "directory /no/such/dir does not exist"),
])
def test_output_paths_that_cannot_work_are_refused_before_any_work(path, message):
    with pytest.raises(InputError, match=message):
        output_path(path)
