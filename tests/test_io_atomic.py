"""Atomic writes: the target is replaced only by a complete file, and a failed write leaves no trace."""

import json

import pytest

from nenya.io.atomic import atomic_path, write_json


def test_success_replaces_the_target(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    write_json(str(target), {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_failure_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "last.pth"
    target.write_bytes(b"precious")
    with pytest.raises(RuntimeError):
        with atomic_path(str(target)) as temporary, open(temporary, "wb") as handle:
            handle.write(b"half")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]
