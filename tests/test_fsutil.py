import os
import stat

import pytest

from edgekd.errors import EdgeKDError
from edgekd.fsutil import atomic_dir, atomic_path, check_can_create, write_json


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
    for target in (atomic_dir, atomic_path):  # nor the parent folders made for it
        with pytest.raises(RuntimeError):
            with target(tmp_path / "new" / "sub" / "out"):
                raise RuntimeError("boom")
        assert list(tmp_path.iterdir()) == []
    (tmp_path / "kept").mkdir()
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "kept" / "sub" / "out.json"):
            raise RuntimeError("boom")
    assert [p.name for p in tmp_path.iterdir()] == ["kept"] and not any((tmp_path / "kept").iterdir())
    with atomic_dir(tmp_path / "out") as d:
        (d / "whole.bin").write_bytes(b"x")
    assert (tmp_path / "out" / "whole.bin").is_file()
    with pytest.raises(EdgeKDError, match="already exists"):
        with atomic_dir(tmp_path / "out"):
            pass


def test_results_get_umask_permissions_even_from_writers_that_recreate_the_file(tmp_path):
    mask = os.umask(0)
    os.umask(mask)
    with atomic_path(tmp_path / "w.bin") as tmp:  # as safetensors does: a new file, owner-only
        tmp.unlink()
        os.close(os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600))
    assert stat.S_IMODE((tmp_path / "w.bin").stat().st_mode) == 0o666 & ~mask
    with atomic_dir(tmp_path / "export") as d:  # mkdtemp makes 0700: a container user could not read it
        (d / "m.onnx").write_bytes(b"x")
    assert stat.S_IMODE((tmp_path / "export").stat().st_mode) == 0o777 & ~mask


def test_an_out_path_that_cannot_be_written_is_refused_before_anything_is_made(tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    with pytest.raises(EdgeKDError, match="is a file, not a folder"):
        check_can_create(tmp_path / "afile", "folder")
    with pytest.raises(EdgeKDError, match="afile is a file, not a folder"):
        check_can_create(tmp_path / "afile" / "sub" / "deeper", "folder")
    with pytest.raises(EdgeKDError, match="is a folder, not a file"):
        write_json(tmp_path / "adir", {})
    assert check_can_create(tmp_path / "new" / "deeper", "folder") == tmp_path / "new" / "deeper"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile"]


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_a_folder_no_file_can_be_made_in_is_a_one_line_error():
    """/proc passes os.access for root; making the temporary beside the target is what fails there."""
    for target in (atomic_dir, atomic_path):
        with pytest.raises(EdgeKDError, match="/proc/edgekd-never"):
            with target("/proc/edgekd-never"):
                pass


def test_atomic_dir_removes_what_a_killed_command_left_and_keeps_what_a_live_one_builds(tmp_path):
    import os
    import socket
    import subprocess
    import sys
    import time

    from edgekd.fsutil import OWNER, STALE_UNOWNED_S

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    leftovers = {
        "killed": (f"{host} {gone.stdout.strip()}", 0),  # its process is gone
        "live": (f"{host} {os.getpid()}", 0),  # this process: still building it
        "elsewhere": ("another-host 1", 0),  # cannot be checked from here
        "old-unowned": (None, STALE_UNOWNED_S + 60),  # an older edgekd's, untouched for over an hour
        "new-unowned": (None, 0),  # just made, its owner not written yet
    }
    for name, (owner, age) in leftovers.items():
        folder = tmp_path / f".exp.{name}.partial"
        (folder / "sub").mkdir(parents=True)
        if owner is not None:
            (folder / OWNER).write_text(owner)
        if age:
            old = time.time() - age
            os.utime(folder, (old, old))
    (tmp_path / ".other.x.partial").mkdir()  # another --out's, with no owner mark: not known to be edgekd's
    for name, owner in (("killed", leftovers["killed"][0]), ("live", leftovers["live"][0])):  # other --outs' of edgekd
        (tmp_path / f".other-{name}.x.partial").mkdir()
        (tmp_path / f".other-{name}.x.partial" / OWNER).write_text(owner)
    with atomic_dir(tmp_path / "exp") as tmp:
        assert (tmp / OWNER).read_text() == f"{host} {os.getpid()}"
        (tmp / "f").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".exp.elsewhere.partial", ".exp.live.partial", ".exp.new-unowned.partial", ".other-live.x.partial",
        ".other.x.partial", "exp"]
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == ["f"]  # the owner mark does not ship
