"""Benchmark an export dir on another machine over SSH: copy it there, run the bench, bring bench.json back.

Uses the system ``ssh``/``scp`` binaries in batch mode (keys or an agent, never a password prompt), so the
user's ``~/.ssh/config``, jump hosts and agents work as they do in a terminal. The device needs only
``pip install 'edgekd[device]'``: it runs ``python -m edgekd.export.bench``, which does not import torch.
"""

from __future__ import annotations

import contextlib
import posixpath
import shlex
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgekd.contracts.bench_rows import BENCH_JSON, read_rows
from edgekd.contracts.manifest import load_manifest
from edgekd.errors import EdgeKDError
from edgekd.export.bench import bench_argv, dir_list

INSTALL_HINT = "pip install 'edgekd[device]'"


def parse_target(target: str) -> tuple[str, str | None]:
    """``user@host[:path]`` -> (``user@host``, path or None)."""
    dest, sep, path = target.partition(":")
    if not dest or dest.startswith("-") or any(c.isspace() for c in dest) or (sep and not path):
        raise EdgeKDError(f"bad SSH target {target!r}; write it as user@host or user@host:/remote/folder")
    return dest, path or None


def check_remote_options(target: str, port: int | None, identity: str | Path | None) -> None:
    """The SSH settings of a remote bench, checked before the local measurements take their minutes."""
    parse_target(target)
    if port is not None and not 1 <= port <= 65535:
        raise EdgeKDError(f"SSH port must be between 1 and 65535, got {port}")
    if identity is not None and not Path(identity).is_file():
        raise EdgeKDError(f"SSH key {identity} does not exist; pass the private key file with --identity")


def _last_line(text: str) -> str:
    return (text.strip().splitlines() or ["no message"])[-1]


class _Ssh:
    """ssh/scp command lines for one destination, with the same port, key and options for both."""

    def __init__(self, dest: str, port: int | None, identity: str | Path | None, ssh_options: Sequence[str]) -> None:
        self.dest = dest
        self.host = dest.rpartition("@")[2]
        self.common = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=15"]
        for opt in ssh_options:
            self.common += ["-o", opt]
        if identity is not None:
            self.common += ["-i", str(identity)]
        self.port = port

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise EdgeKDError(f"`{argv[0]}` is not installed on this machine; install the OpenSSH client") from None

    def _unreachable(self, r: subprocess.CompletedProcess) -> EdgeKDError:
        return EdgeKDError(
            f"cannot reach {self.host} over ssh ({_last_line(r.stderr)}); check the host, port and key "
            "(batch mode: no password prompts)"
        )

    def run(self, command: str) -> subprocess.CompletedProcess:
        port = ["-p", str(self.port)] if self.port else []
        r = self._run(["ssh", *self.common, *port, self.dest, command])
        if r.returncode == 255:
            raise self._unreachable(r)
        return r

    def copy(self, src: str, dst: str) -> None:
        port = ["-P", str(self.port)] if self.port else []
        r = self._run(["scp", "-q", "-r", *self.common, *port, src, dst])
        if r.returncode != 0:
            if r.returncode == 255:
                raise self._unreachable(r)
            raise EdgeKDError(f"copying {src} to {dst} failed ({_last_line(r.stderr)})")


def run_remote(
    target: str,
    export_dir: str | Path | Sequence[str | Path],
    bench_args: Mapping[str, Any] | None = None,
    *,
    port: int | None = None,
    identity: str | Path | None = None,
    ssh_options: Sequence[str] = (),
    remote_python: str = "python3",
) -> list[dict[str, Any]]:
    """Run the bench of ``export_dir`` on ``target`` (``user@host[:path]``) and return its rows.

    ``export_dir`` may be several export dirs, timed on the device in the same interleaved rounds (each row's
    ``export`` is then the local dir as given). ``bench_args`` are ``run_bench`` keyword arguments;
    ``ssh_options`` are ``-o Key=Value`` settings; ``remote_python`` is the interpreter on the device that has
    edgekd (a shell word, e.g. ``~/venv/bin/python``). Without a path the exports are copied to a temporary folder
    that is removed afterwards. Each returned row's machine is the device's, with ``target`` set to ``user@host``.
    """
    given = dir_list(export_dir)
    dirs = [Path(d).resolve() for d in given]
    for d in dirs:  # a bad export dir fails here, before anything is copied
        load_manifest(d)
    check_remote_options(target, port, identity)
    dest, path = parse_target(target)
    ssh = _Ssh(dest, port, identity, ssh_options)
    make_dir = f"mkdir -p {shlex.quote(path)} && echo {shlex.quote(path)}" if path else "mktemp -d"
    r = ssh.run(f"{remote_python} -c 'import edgekd.export.bench' && {make_dir}")
    if r.returncode != 0:
        if "No module named" in r.stderr:
            raise EdgeKDError(f"edgekd is not installed on {ssh.host}: {INSTALL_HINT}")
        if r.returncode == 127:
            raise EdgeKDError(
                f"{remote_python} was not found on {ssh.host}; pass the Python that has edgekd ({INSTALL_HINT})")
        raise EdgeKDError(f"preparing {ssh.host} failed (exit {r.returncode}: {_last_line(r.stderr)})")
    workdir = _last_line(r.stdout)
    # one export keeps its name on the device; several (which may share a name) go into numbered folders
    remote_exports = ([f"{workdir}/{dirs[0].name}"] if len(dirs) == 1 else
                      [f"{workdir}/edgekd-export-{i}" for i in range(len(dirs))])
    remote_json = f"{workdir}/{BENCH_JSON}"
    try:
        if len(dirs) > 1:  # scp copies into a folder that already exists: a kept --remote path's last ones go
            ssh.run("rm -rf " + " ".join(shlex.quote(e) for e in remote_exports))
        for local, remote in zip(dirs, remote_exports):
            ssh.copy(str(local), f"{dest}:{remote}" if len(dirs) > 1 else f"{dest}:{workdir}/")
        argv = [*remote_exports, "--json", remote_json, *bench_argv({**(bench_args or {}), "progress": False})]
        r = ssh.run(f"{remote_python} -m edgekd.export.bench " + " ".join(shlex.quote(a) for a in argv))
        if r.returncode != 0:
            raise EdgeKDError(f"the benchmark failed on {ssh.host} (exit {r.returncode}): {_last_line(r.stderr)}")
        with tempfile.TemporaryDirectory(prefix="edgekd-remote-") as tmp:
            ssh.copy(f"{dest}:{remote_json}", tmp)
            rows = read_rows(Path(tmp) / BENCH_JSON)
    finally:
        if not path:
            with contextlib.suppress(EdgeKDError):  # a failed clean-up must not hide the bench's own error
                ssh.run(f"rm -rf {shlex.quote(workdir)}")
    names = {posixpath.normpath(r): str(g) for r, g in zip(remote_exports, given)}  # the device writes them normalised
    for row in rows:
        if row.get("export") is not None:
            row["export"] = names.get(posixpath.normpath(row["export"]), row["export"])
    for row in rows:
        row["machine"] = {**row["machine"], "target": dest}
    return rows
