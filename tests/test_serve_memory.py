"""The server's memory under the largest images it accepts: a real `python -m edgekd.serve` process, its RSS read
from /proc while eight maximum-size images of each hard mode arrive at once."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import wait_until_ready
from PIL import Image

BUDGET_MB = 250  # peak resident memory of the whole server process
SIDE = 5000  # 25 megapixels: the default pixel limit


def _rss_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _encoded(mode: str) -> tuple[str, bytes]:
    """A maximum-size image of ``mode``, a few hundred kB on the wire: a smooth ramp compresses well."""
    ramp = np.linspace(0, 255, SIDE, dtype=np.float32)[None, :].repeat(64, 0)
    buf = io.BytesIO()
    if mode == "I;16":
        rows = (ramp * 257).astype(np.uint16)
        img = Image.fromarray(np.tile(rows, (SIDE // 64 + 1, 1))[:SIDE])
        assert img.mode == "I;16"
        img.save(buf, "PNG")
        return "grey16.png", buf.getvalue()
    rows = ramp.astype(np.uint8)
    grey = np.tile(rows, (SIDE // 64 + 1, 1))[:SIDE]
    if mode == "RGBA":
        img = Image.fromarray(np.dstack([grey, grey[::-1], np.full_like(grey, 90), grey]))
        img.save(buf, "PNG")
        return "rgba.png", buf.getvalue()
    if mode == "P":
        Image.fromarray(grey, "L").convert("P").save(buf, "PNG", transparency=0)
        return "palette.png", buf.getvalue()
    bands = [Image.fromarray(b) for b in (grey, grey[::-1], grey, np.full_like(grey, 40))]
    Image.merge("CMYK", bands).save(buf, "JPEG", quality=70)
    return "cmyk.jpg", buf.getvalue()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from Linux's /proc")
def test_eight_maximum_size_images_at_once_stay_within_the_memory_budget(export_dir: Path, tmp_path: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url, log = f"http://127.0.0.1:{port}", tmp_path / "serve.log"
    images = [_encoded(mode) for mode in ("RGBA", "I;16", "P", "CMYK")]
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "edgekd.serve", str(export_dir), "--port", str(port),
                                 "--max-upload-mb", "20"], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until_ready(proc, url, log, 120)
        with httpx.Client(base_url=url, timeout=120) as client:
            small = io.BytesIO()
            Image.new("RGB", (300, 200), (10, 200, 30)).save(small, "PNG")
            for _ in range(3):  # warm: the first requests allocate the server's steady-state buffers
                assert client.post(
                    "/predict", files={"file": ("s.png", small.getvalue(), "image/png")}).status_code == 200
            baseline = _rss_mb(proc.pid, "VmRSS")

            def send(item: tuple[str, bytes]) -> int:
                name, data = item
                return client.post("/predict", files={"file": (name, data, "application/octet-stream")}).status_code

            for name, data in images:
                with ThreadPoolExecutor(8) as pool:
                    statuses = list(pool.map(send, [(name, data)] * 8))
                assert statuses == [200] * 8, (name, statuses, log.read_text()[-2000:])
            peak, after = _rss_mb(proc.pid, "VmHWM"), _rss_mb(proc.pid, "VmRSS")
    finally:
        proc.terminate()
        proc.wait(30)
    assert peak <= BUDGET_MB, f"peak RSS {peak:.0f} MB (baseline {baseline:.0f} MB)"
    assert after <= baseline + 30, f"RSS {after:.0f} MB after the burst, {baseline:.0f} MB before"
