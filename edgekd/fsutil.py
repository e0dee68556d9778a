"""Atomic file and directory writes, so a killed or failed command never leaves half a file behind."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from edgekd.errors import EdgeKDError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_can_create(path: str | os.PathLike, kind: str = "folder") -> Path:
    """Fail early, in one line, when ``path`` cannot be written as a ``kind`` ("folder" or "file"); creates nothing.

    Commands call this before long work, so that a bad ``--out`` is not found only at the end.
    """
    path = Path(path)
    if path.exists() and path.is_dir() != (kind == "folder"):
        raise EdgeKDError(f"{path} is a {'folder' if path.is_dir() else 'file'}, not a {kind}; choose another --out")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise EdgeKDError(f"cannot write {path}: {parent} is a file, not a folder; choose another --out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EdgeKDError(f"cannot write {path}: {parent} is not writable; choose another --out")
    return path


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
LOW_SPACE = 1 << 20  # bytes free under which a failed write is taken as a full disk, whatever the library said


@contextlib.contextmanager
def full_disk_as_error(where: str | os.PathLike) -> Iterator[None]:
    """A failure inside the block that a full disk under ``where`` caused becomes one line saying so.

    Libraries report it in their own ways: an ``OSError`` with ``ENOSPC`` somewhere in the exception chain, or a
    message such as OpenVINO's "basic_ios::clear: iostream error"; so a third-party failure while the disk has
    (almost) nothing free is taken as one too. A user mistake (an ``EdgeKDError`` of edgekd's own) passes as it is.
    """
    try:
        yield
    except Exception as e:
        if isinstance(e, EdgeKDError) and e.__cause__ is None:
            raise
        folder = Path(where)
        while not folder.exists():
            folder = folder.parent
        free = shutil.disk_usage(folder).free
        if not (_no_space_in_chain(e) or free < LOW_SPACE):
            raise
        raise EdgeKDError(f"the disk is full: no space left under {folder} ({free / 1e6:.1f} MB free); "
                          "free some space or choose another --out") from e


def _no_space_in_chain(e: BaseException | None) -> bool:
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError) and e.errno in NO_SPACE:
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def make_dir(path: Path) -> list[Path]:
    """``mkdir -p``, with a failure (no space, no permission) as a one-line error.

    Returns the folders it created, deepest first, so that a failed command can remove them again.
    """
    created = [p for p in (path, *path.parents) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        remove_empty(created)
        raise EdgeKDError(f"cannot create {path}: {e.strerror or e}; choose another --out") from None
    return created


def remove_empty(folders: list[Path]) -> None:
    """Remove folders a failed command created, deepest first, stopping at the first that is not empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


@contextlib.contextmanager
def _beside(path: Path, make: Callable[..., str], suffix: str) -> Iterator[Path]:
    """A temporary file or folder made by ``make`` next to ``path`` (creating its parents).

    If the block fails, the folders made for it are removed again.
    """
    created = make_dir(path.parent)
    try:
        try:
            temp = Path(make(prefix=f".{path.name}.", suffix=suffix, dir=path.parent))
        except OSError as e:  # e.g. a folder that os.access calls writable for root, such as /proc
            raise EdgeKDError(f"cannot write {path}: {e.strerror or e}; choose another --out") from None
        yield temp
    except BaseException:
        remove_empty(created)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    path = check_can_create(path, "file")

    def make_file(**kwargs: Any) -> str:
        fd, name = tempfile.mkstemp(**kwargs)
        os.close(fd)
        return name

    with _beside(path, make_file, ".tmp") as tmp_path:
        try:
            yield tmp_path
            # mkstemp makes 0600 and some writers (safetensors) recreate the file 0600: set the mode any written
            # file gets
            os.chmod(tmp_path, 0o666 & ~_umask())
            os.replace(tmp_path, path)
        finally:
            tmp_path.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


OWNER = ".edgekd-owner"  # inside a folder being built: "host pid" of the process building it
STALE_UNOWNED_S = 3600  # a partial folder with no owner (an older edgekd's, or killed before it wrote one)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name and move it into place only when the block succeeds.

    An existing ``path`` is replaced only if ``overwrite``; on any error the temporary tree, and any parent
    folders made for it, are removed and ``path`` is left as it was. Temporary trees that earlier, killed
    commands left beside ``path`` are removed first (``remove_leftovers``).
    """
    path = check_can_create(path, "folder")
    if path.exists() and not overwrite and any(path.iterdir()):
        raise EdgeKDError(f"{path} already exists and is not empty; choose another --out or remove it")
    remove_leftovers(path)
    with _beside(path, tempfile.mkdtemp, ".partial") as tmp:
        try:
            (tmp / OWNER).write_text(f"{socket.gethostname()} {os.getpid()}", encoding="utf-8")
            yield tmp
            (tmp / OWNER).unlink()
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700: a container user could not read an export made here
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def remove_leftovers(path: Path) -> list[Path]:
    """Remove the partial folders beside ``path`` whose builder is gone: a process of this host that no longer runs
    (for any name's, ``.*.partial`` with edgekd's owner mark), or, for ``path``'s own name with no owner recorded,
    untouched for an hour. A folder another live command is building stays. Returns what was removed."""
    removed = []
    for partial in path.parent.glob(".*.partial") if path.parent.is_dir() else []:
        ours = partial.name.startswith(f".{path.name}.")
        if partial.is_dir() and (ours or (partial / OWNER).is_file()) and not _being_built(partial):
            shutil.rmtree(partial, ignore_errors=True)
            removed.append(partial)
    return removed


def _being_built(folder: Path) -> bool:
    try:
        host, pid = (folder / OWNER).read_text(encoding="utf-8").split()
    except (OSError, ValueError):
        return time.time() - folder.stat().st_mtime < STALE_UNOWNED_S
    if host != socket.gethostname():
        return True  # a shared folder: another machine's process cannot be checked from here
    try:
        os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):  # another user's process, or a mark edgekd cannot read: leave it
        pass
    return True
