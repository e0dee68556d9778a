"""The server's memory under the largest inputs it accepts: a real `python -m edgekd.serve` process, its RSS read
from /proc while eight maximum-size images of each hard mode, or sixteen 10 MB JSON bodies of each hostile kind
(``benchmarks/serve_hostile.py``, which measures the same at any size), arrive at once."""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from edgekd.contracts.manifest import load_manifest
from serve_hostile import hostile_bodies, hostile_row, serve
from serve_load import rss_mb, stop

BUDGET_MB = 250  # peak resident memory of the whole server process
MAX_WAIT_S = 0.5  # another client's small /predict while large JSON bodies arrive
SIDE = 5000  # 25 megapixels: the default pixel limit


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


@contextlib.contextmanager
def served(export_dir: Path, tmp_path: Path, *args: str) -> Iterator[tuple[int, str, Path]]:
    """A real ``python -m edgekd.serve`` process: its pid, its URL and its log, until the ``with`` ends."""
    log = tmp_path / "serve.log"
    proc, url = serve(sys.executable, export_dir, log, *args)
    try:
        yield proc.pid, url, log
    finally:
        stop(proc)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from Linux's /proc")
def test_eight_maximum_size_images_at_once_stay_within_the_memory_budget(export_dir: Path, tmp_path: Path):
    images = [_encoded(mode) for mode in ("RGBA", "I;16", "P", "CMYK")]
    with served(export_dir, tmp_path, "--max-upload-mb", "20") as (pid, url, log):
        with httpx.Client(base_url=url, timeout=120) as client:
            small = io.BytesIO()
            Image.new("RGB", (300, 200), (10, 200, 30)).save(small, "PNG")
            for _ in range(3):  # warm: the first requests allocate the server's steady-state buffers
                assert client.post(
                    "/predict", files={"file": ("s.png", small.getvalue(), "image/png")}).status_code == 200
            baseline = rss_mb(pid)

            def send(item: tuple[str, bytes]) -> int:
                name, data = item
                return client.post("/predict", files={"file": (name, data, "application/octet-stream")}).status_code

            for name, data in images:
                with ThreadPoolExecutor(8) as pool:
                    statuses = list(pool.map(send, [(name, data)] * 8))
                assert statuses == [200] * 8, (name, statuses, log.read_text()[-2000:])
            peak, after = rss_mb(pid, "VmHWM"), rss_mb(pid)
    assert peak <= BUDGET_MB, f"peak RSS {peak:.0f} MB (baseline {baseline:.0f} MB)"
    assert after <= baseline + 30, f"RSS {after:.0f} MB after the burst, {baseline:.0f} MB before"


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from Linux's /proc")
def test_json_bodies_at_the_upload_limit_stay_within_the_memory_budget_and_do_not_stall_others(
        export_dir: Path, tmp_path: Path):
    """Sixteen 10 MB v2 JSON bodies of each hostile kind at once: 400 (200 for the valid batch), the server inside
    its memory budget; four at once while a small /predict is sent in a loop: that request still answers fast."""
    model = load_manifest(export_dir)["model"]
    with served(export_dir, tmp_path) as (pid, url, log):
        bodies = hostile_bodies(10_000_000, "input", [3, 32, 32])
        rows = {kind: hostile_row(url, pid, model, body, 16) for kind, body in bodies.items()}
    for kind, row in rows.items():
        assert row["statuses"] == ([200] if kind.startswith("valid") else [400]), (kind, row, log.read_text()[-2000:])
        assert row["peak_rss_mb"] <= BUDGET_MB, (kind, row)
        assert row["probe_max_s"] < MAX_WAIT_S, (kind, row)
