"""edgekd bench over SSH, against a real sshd the test starts on 127.0.0.1 with its own keys."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgekd.errors import EdgeKDError
from edgekd.export.bench import run_bench
from edgekd.export.bench_report import merge_reports, render_markdown
from edgekd.export.remote import parse_target, run_remote
from test_bench import build_tiny_export

SSHD = Path("/usr/sbin/sshd")
BENCH = {"runtimes": ["ort"], "precisions": ["fp32", "int8"], "warmup": 0, "iters": 3}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """An sshd on a free loopback port that lets the current user in with a key made here; yields connection
    settings."""
    if not SSHD.is_file() or shutil.which("ssh-keygen") is None or shutil.which("scp") is None:
        if os.environ.get("CI"):
            pytest.fail("OpenSSH server/client missing on CI: .ci/run must apt-get install openssh-server")
        pytest.skip("OpenSSH server/client not installed (apt-get install -y openssh-server)")
    if os.geteuid() == 0:  # sshd started by root insists on its privilege-separation directory
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    d = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    shutil.copy(d / "user_key.pub", d / "authorized_keys")
    port = free_port()
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {(d / 'host_key.pub').read_text()}")
    (d / "remote_tmp").mkdir()
    (d / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {d / 'host_key'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        "StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nPidFile none\nAcceptEnv TMPDIR\n"
        "Subsystem sftp /usr/lib/openssh/sftp-server\n"
    )
    log = open(d / "sshd.log", "wb")  # noqa: SIM115 - sshd writes to it until teardown
    proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(d / "sshd_config")], stderr=log)
    deadline = time.monotonic() + 10
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"sshd did not start: {(d / 'sshd.log').read_text()}")
        time.sleep(0.1)
    settings = {
        "dest": f"{getpass.getuser()}@127.0.0.1",
        "port": port,
        "identity": d / "user_key",
        # the host key is pinned: no trust-on-first-use, no write to ~/.ssh/known_hosts
        "ssh_options": [f"UserKnownHostsFile={d / 'known_hosts'}", "StrictHostKeyChecking=yes",
                        "IdentitiesOnly=yes", f"SetEnv=TMPDIR={d / 'remote_tmp'}"],
        "remote_tmp": d / "remote_tmp",
    }
    yield settings
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    return build_tiny_export(tmp_path_factory.mktemp("remote") / "export")


def connect(sshd) -> dict:
    return {k: sshd[k] for k in ("port", "identity", "ssh_options")}


def remote_dirs(sshd) -> list[Path]:
    """Folders left in the device's TMPDIR (the login shell may drop its own files there)."""
    return [p for p in sshd["remote_tmp"].iterdir() if p.is_dir()]


def test_parse_target():
    assert parse_target("pi@raspberrypi.local") == ("pi@raspberrypi.local", None)
    assert parse_target("me@10.0.0.2:/opt/bench") == ("me@10.0.0.2", "/opt/bench")
    for bad in ("", ":x", "-oProxyCommand=evil", "me@host:"):
        with pytest.raises(EdgeKDError, match="bad SSH target"):
            parse_target(bad)


def test_run_remote_returns_rows_tagged_with_the_device_and_cleans_up(sshd, export):
    rows = run_remote(sshd["dest"], export, BENCH, remote_python=sys.executable, **connect(sshd))
    assert [(r["runtime"], r["precision"], r["status"]) for r in rows] == [("ort", "fp32", "ok"), ("ort", "int8", "ok")]
    assert all(r["machine"]["target"] == sshd["dest"] and r["machine"]["cpu"] and r["iters"] == 3 for r in rows)
    assert rows[1]["speedup"] == pytest.approx(rows[0]["p50_ms"] / rows[1]["p50_ms"], rel=1e-2)
    assert remote_dirs(sshd) == []  # the temporary copy on the device is gone

    local = run_bench(export, **BENCH, progress=False)
    md = render_markdown(merge_reports(local, rows), "local and remote")
    assert "| Machine | Format |" in md and f"| {sshd['dest']} | ONNX Runtime INT8 |" in md
    assert md.count("- **Fastest on ") == 2


def test_run_remote_into_a_given_folder_keeps_the_copy(sshd, export, tmp_path):
    target = f"{sshd['dest']}:{tmp_path / 'device'}"
    rows = run_remote(target, export, {**BENCH, "precisions": ["int8"]}, remote_python=sys.executable, **connect(sshd))
    assert [r["status"] for r in rows] == ["ok"]
    assert (tmp_path / "device" / "export" / "manifest.json").is_file()
    assert (tmp_path / "device" / "bench.json").is_file()


def test_several_exports_are_timed_together_on_the_device(sshd, export, tmp_path):
    other = shutil.copytree(export, tmp_path / "other" / "export")  # two exports of the same name
    for suffix in ("", "/"):  # the second time into the folder the first one kept, written with a trailing slash
        target = f"{sshd['dest']}:{tmp_path / 'device'}{suffix}"
        rows = run_remote(target, [export, other], {**BENCH, "precisions": ["int8"]}, remote_python=sys.executable,
                          **connect(sshd))
        assert [(r["export"], r["status"]) for r in rows] == [(str(export), "ok"), (str(other), "ok")]
        assert all(r["machine"]["target"] == sshd["dest"] for r in rows)
    assert sorted(p.name for p in (tmp_path / "device").iterdir()) == ["bench.json", "edgekd-export-0",
                                                                       "edgekd-export-1"]
    assert (tmp_path / "device" / "edgekd-export-1" / "manifest.json").is_file()


def test_remote_without_edgekd_says_how_to_install(sshd, export):
    # -I -S: the same interpreter without site-packages, i.e. a Python where edgekd is not installed
    with pytest.raises(EdgeKDError, match=r"edgekd is not installed on 127\.0\.0\.1: pip install 'edgekd\[device\]'"):
        run_remote(sshd["dest"], export, BENCH, remote_python=f"{sys.executable} -I -S", **connect(sshd))
    with pytest.raises(EdgeKDError, match="was not found on 127.0.0.1"):
        run_remote(sshd["dest"], export, BENCH, remote_python="/nonexistent/python3", **connect(sshd))


def test_remote_bench_failure_and_unreachable_host(sshd, export):
    with pytest.raises(EdgeKDError, match="the benchmark failed on 127.0.0.1 .*unknown runtime tensorrt"):
        run_remote(sshd["dest"], export, {"runtimes": ["tensorrt"]}, remote_python=sys.executable, **connect(sshd))
    assert remote_dirs(sshd) == []
    with pytest.raises(EdgeKDError, match="cannot reach 127.0.0.1 over ssh"):
        run_remote(sshd["dest"], export, BENCH, remote_python=sys.executable, **{**connect(sshd), "port": free_port()})
