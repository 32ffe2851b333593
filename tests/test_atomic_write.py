"""encoders.files.atomic_write: the one way this program replaces a file of its own (FAISS, previews, ONNX sidecars,
checkpoints, exports)."""

from __future__ import annotations

import os
import stat

import pytest

from encoders.files import atomic_write


def test_a_file_is_replaced_whole_with_the_permissions_of_any_new_file(tmp_path):
    target = tmp_path / "sub" / "vectors.faiss"
    old_umask = os.umask(0o022)
    try:
        atomic_write(target, lambda tmp: open(tmp, "wb").write(b"first"))
        atomic_write(target, lambda tmp: open(tmp, "wb").write(b"second"))
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"second"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # readable by the others, as a shared library needs
    assert sorted(p.name for p in target.parent.iterdir()) == ["vectors.faiss"]


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary_one(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text("old")

    def half_then_fail(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
