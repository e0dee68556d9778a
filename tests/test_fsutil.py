import os
import stat

import pytest

from edgekd.errors import EdgeKDError
from edgekd.fsutil import atomic_dir, write_json


def test_atomic_write_leaves_no_temp_and_normal_permissions(tmp_path):
    write_json(tmp_path / "a.json", {"x": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o666 & ~mask


def test_atomic_dir_failure_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "out") as d:
            (d / "half.bin").write_bytes(b"x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(tmp_path / "out") as d:
        (d / "whole.bin").write_bytes(b"x")
    assert (tmp_path / "out" / "whole.bin").is_file()
    with pytest.raises(EdgeKDError, match="already exists"):
        with atomic_dir(tmp_path / "out"):
            pass
