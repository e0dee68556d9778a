"""`edgekd report`: one offline HTML page from run dirs, an export manifest and a bench.json.

Fixtures are small files in the real shapes (nothing is trained); the page is checked as text, its PNGs are
decoded, and headless Chromium renders it to prove it displays with no console errors.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgekd.errors import EdgeKDError
from edgekd.export.bench import add_speedups
from edgekd.export.bench_report import EMULATED_NOTE, write_json
from edgekd.report import build_report

CHROMIUM = Path("/usr/bin/chromium")
HOST = {"host": "box", "cpu": "Test CPU", "arch": "x86_64", "cores": 2, "os": "Linux"}
BOARD = {"host": "box", "target": "pi", "cpu": "Cortex-A72", "arch": "aarch64", "cores": 4, "os": "Linux"}


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def _run(root: Path, name: str, method: str, val: list[float], losses: list[dict[str, float]], teacher=None) -> None:
    d = root / "runs" / name
    lines = [
        {"epoch": i + 1, "losses": loss, "train_acc": v - 0.05, "val_acc": v, "lr": 0.1 / (i + 1), "seconds": 2.0,
         "images_per_s": 500.0}
        for i, (v, loss) in enumerate(zip(val, losses))
    ]
    d.mkdir(parents=True)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    (d / "config.yaml").write_text(f"method: {method}\nepochs: {len(val)}\n", encoding="utf-8")
    _write(d / "model.json", {"arch": "resnet8", "num_classes": 10, "dataset": "digits", "method": method})
    _write(d / "summary.json", {"best_acc": max(val), "final_acc": val[-1], "epochs": len(val), "method": method,
                                "model": "resnet8", "teacher": teacher, "dataset": "digits", "params": 78042,
                                "seconds": 6.5})


def _bench_row(runtime, precision, p50, p99, accuracy, machine=HOST, status="ok", emulated=False, artifact=None):
    measured = status == "ok"
    return {
        "runtime": runtime, "precision": precision, "batch": 1, "threads": None, "status": status,
        "p50_ms": p50 if measured else None, "p90_ms": (p50 + p99) / 2 if measured else None,
        "p99_ms": p99 if measured else None, "mean_ms": p50 * 1.1 if measured else None,
        "iters": 50 if measured else None, "throughput_ips": 1000 / (p50 * 1.1) if measured else None,
        "size_mb": 0.125665 if precision == "int8" else 0.348617,
        "accuracy": accuracy, "speedup": None, "baseline": None, "artifact": artifact, "options": {},
        "machine": machine, "emulated": emulated,
    }


def make_demo(root: Path) -> Path:
    """Two 3-epoch runs, a pruned model dir, an export manifest, a bench.json and a demo summary."""
    _run(root, "ce", "ce", [0.55, 0.72, 0.8125], [{"ce": 1.9}, {"ce": 1.1}, {"ce": 0.7}])
    _run(root, "drkd", "drkd", [0.58, 0.79, 0.84375],
         [{"ce": 0.4, "kd": 1.6}, {"ce": 0.3, "kd": 0.9}, {"ce": 0.2, "kd": 0.5}], teacher="dynamic")
    _write(root / "runs" / "pruned" / "model.json",
           {"arch": "resnet8", "dataset": "digits",
            "pruned": {"ratio": 0.3, "method": "structured", "source": "runs/ce"}})
    # a half-written dir from an interrupted atomic write: never reported
    _run(root / ".ghost.x1.partial", "ghost", "ghostmethod", [0.1, 0.2, 0.3], [{"ce": 2.0}] * 3)
    _write(root / "export" / "manifest.json", {
        "model": "resnet8-digits",
        "eval": {"dataset": "digits", "split": "val", "samples": 360, "torch_accuracy": 0.8125},
        "artifacts": {
            "onnx-fp32": {"format": "onnx", "precision": "fp32", "size_bytes": 348617, "accuracy": 0.8125,
                          "agreement": 1.0, "max_abs_diff": 1.43e-06},
            "onnx-int8": {"format": "onnx", "precision": "int8", "size_bytes": 125665, "accuracy": 0.80625,
                          "agreement": 0.9625, "max_abs_diff": 0.94},
        },
    })
    rows = add_speedups([
        _bench_row("torch", "fp32", 6.4, 9.0, 0.8125),
        _bench_row("ort", "fp32", 2.0, 3.5, 0.8125, artifact="onnx-fp32"),
        _bench_row("ort", "int8", 0.8, 1.6, 0.80625, artifact="onnx-int8"),
        _bench_row("openvino", "int8", 0.0, 0.0, None, status="skipped: openvino is not installed"),
        _bench_row("ort", "int8", 0.05, 0.07, 0.80625, machine=BOARD, emulated=True, artifact="onnx-int8"),
    ])
    write_json(rows, root / "bench" / "bench.json", "resnet8-digits")
    _write(root / "demo-summary.json", [
        {"stage": "ce <b>baseline</b>", "accuracy": 0.8125, "size_mb": 0.348617, "p50_ms": 2.0, "speedup": 1.0},
        {"stage": "drkd int8", "accuracy": 0.80625, "size_mb": 0.125665, "p50_ms": 0.8, "speedup": 2.5},
    ])
    return root


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory) -> tuple[Path, str]:
    root = make_demo(tmp_path_factory.mktemp("demo"))
    out = build_report(root)
    assert out == root / "report.html"
    return out, out.read_text(encoding="utf-8")


def _pngs(page: str) -> list[np.ndarray]:
    blobs = re.findall(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB"), dtype=np.float32) for b in blobs]


def _section(page: str, heading: str) -> str:
    """The HTML between one <h2> and the next."""
    start = page.index(f"<h2>{heading}</h2>")
    end = page.find("<h2>", start + 1)
    return page[start:end if end > 0 else None]


def test_report_holds_every_method_number_and_artifact(demo_report):
    _, page = demo_report
    runs = _section(page, "Runs")
    for text in ("runs/ce", "runs/drkd", "drkd", "dynamic", "81.25%", "84.38%", "78,042", "pruned by 0.3 (structured)"):
        assert text in runs, text
    assert "ghostmethod" not in page  # hidden .partial dirs are skipped
    exports = _section(page, "Export artifacts")
    for text in ("onnx-fp32", "onnx-int8", "INT8", "0.349", "0.126", "80.62%", "96.25%", "1.43e-06"):
        assert text in exports, text
    bench = _section(page, "Bench rows")
    assert "ONNX Runtime INT8" in bench and "PyTorch FP32" in bench
    assert "0.800" in bench and "8.00× vs PyTorch FP32" in bench  # 6.4 ms / 0.8 ms
    assert "skipped: openvino is not installed" in bench
    summary = _section(page, "Summary")
    assert "84.38%: drkd (runs/drkd)" in summary
    assert "onnx-int8: 0.126 MB, accuracy 80.62% (PyTorch 81.25%)" in summary
    assert "ONNX Runtime INT8: p50 0.800 ms, 8.00× PyTorch FP32" in summary
    assert page.index("<h2>Demo summary</h2>") < page.index("<h2>Summary</h2>")


def test_emulated_rows_are_marked_and_never_the_fastest(demo_report):
    _, page = demo_report
    bench = _section(page, "Bench rows")
    emulated = re.findall(r'<tr class="emulated">(.*?)</tr>', bench)
    assert len(emulated) == 1 and "pi: Cortex-A72" in emulated[0]
    assert "ONNX Runtime INT8 (emulated)" in emulated[0] and "not device latency" in emulated[0]
    assert html.escape(EMULATED_NOTE) in bench
    # the emulated row is the lowest p50 (0.05 ms) yet the summary's fastest is the measured one
    summary = _section(page, "Summary")
    assert "0.0500" not in summary and "Fastest at batch 1 on pi" not in summary
    assert "Emulated bench rows</th><td>1:" in summary


def test_text_is_escaped_and_nothing_loads_from_the_network(demo_report):
    _, page = demo_report
    assert "ce &lt;b&gt;baseline&lt;/b&gt;" in page and "<b>baseline</b>" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert html.escape("default-src 'none'; img-src data:") in page


def test_plots_are_embedded_pngs_with_content(demo_report):
    _, page = demo_report
    images = _pngs(page)
    assert len(images) == 4  # curves, accuracy per method, latency bars, accuracy vs latency
    for img in images:
        assert img.shape[0] > 200 and img.shape[1] > 400
        assert img.std() > 10


def test_sections_without_data_say_so(tmp_path):
    _write(tmp_path / "manifest.json", {"model": "m", "artifacts": {
        "onnx-fp32": {"format": "onnx", "precision": "fp32", "size_bytes": 1000, "accuracy": 0.5}}})
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "bench.json").write_text("{not json", encoding="utf-8")
    out = build_report(tmp_path, tmp_path / "out" / "page.html")
    page = out.read_text(encoding="utf-8")
    assert _pngs(page) == []
    assert "No training metrics (metrics.jsonl) found." in page
    assert "No measured bench rows (bench.json) found." in page
    assert "No bench reports (bench.json) found." in page
    assert "onnx-fp32" in _section(page, "Export artifacts") and "50.00%" in page
    assert "is not a bench.json written by edgekd bench" in _section(page, "Skipped files")
    assert not (tmp_path / "report.html").exists()


def test_malformed_files_are_skipped_with_a_note(tmp_path):
    """Hand-edited or foreign files are listed under 'Skipped files'; the rest of the page is still written."""
    row = {"runtime": "ort", "precision": "fp32", "batch": 1, "threads": None, "status": "ok", "p50_ms": 1.0,
           "p99_ms": 1.2, "machine": "x"}
    unmeasured = {**row, "machine": {"cpu": "x"}, "p50_ms": None}
    docs = {"list": {"rows": ["x"]}, "text": {"rows": "x"}, "machine": {"rows": [row]},
            "nomachine": {"rows": [{**row, "machine": None}]}, "unmeasured": {"rows": [unmeasured]}}
    for name, doc in docs.items():
        _write(tmp_path / name / "bench.json", doc)
    _write(tmp_path / "export" / "manifest.json", {"artifacts": {"onnx-fp32": {"format": "onnx"}}, "eval": "x"})
    (tmp_path / "run").mkdir()
    _write(tmp_path / "run" / "summary.json", {"method": "ce", "best_acc": 0.5})
    lines = [{"epoch": 1, "losses": {"ce": 2.0}, "val_acc": 0.5}, {"epoch": 2, "losses": [1], "val_acc": 0.6}]
    (tmp_path / "run" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    skipped = _section(build_report(tmp_path).read_text(encoding="utf-8"), "Skipped files")
    assert "row 1: str, not an object" in skipped and "&#x27;rows&#x27; is not a list" in skipped
    assert skipped.count("row 1: bad or missing machine") == 2 and "row 1: bad or missing p50_ms)" in skipped
    assert "export/manifest.json: no artifacts, or malformed" in skipped
    assert "skipped line 2 of" in skipped and "not an epoch row written by edgekd" in skipped


def test_nothing_to_report_is_a_user_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(EdgeKDError, match="nothing to report in .*: pass a run dir, export dir or demo dir"):
        build_report(tmp_path)
    with pytest.raises(EdgeKDError, match="is not a directory"):
        build_report(tmp_path / "notes.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # no partial report left behind


def test_chromium_renders_the_page(demo_report, tmp_path):
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing on CI: .ci/run must apt-get install chromium")
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium); the page was not rendered in a browser")
    out, _ = demo_report
    shot = tmp_path / "report.png"
    cmd = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0", "--dump-dom",
        f"--screenshot={shot}", "--window-size=1280,2400", out.resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # console messages (script errors, blocked loads) are logged as "...:CONSOLE:..." lines
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert console == []
    dom = proc.stdout
    assert "<h1>edgekd report: demo" in dom
    assert dom.count("<table") == 5 and dom.count("<img") == 4
    img = np.asarray(Image.open(shot).convert("RGB")).astype(np.int16)
    assert img.shape == (2400, 1280, 3)
    packed = (img[..., 0].astype(np.int32) << 16) | (img[..., 1].astype(np.int32) << 8) | img[..., 2]
    assert len(np.unique(packed)) > 100  # text, tables and plots, not a blank or single-colour page
    # matplotlib's tab:blue (31, 119, 180) appears only where a plot was drawn: lines, bars, markers
    blue = (np.abs(img - np.array([31, 119, 180])).max(axis=2) <= 8)
    rows = np.flatnonzero(blue.any(axis=1))
    assert blue.sum() > 2000 and rows[-1] - rows[0] > 600  # several plots down the page
    top, bottom = rows[0], rows[-1]
    plot = img[top:bottom, :]
    assert (plot.min(axis=2) < 200).mean() > 0.05  # the plot region is not blank


def test_runs_are_averaged_only_with_repeats_of_their_recipe_and_pruned_runs_say_how(tmp_path):
    from edgekd.report import discover

    def run(name, recipe, summary, model=None):
        d = tmp_path / "runs" / name
        _write(d / "summary.json", {"best_acc": 0.9, "final_acc": 0.9, "model": "resnet8", "dataset": "digits",
                                    **summary})
        _write(d / "model.json", {"arch": "resnet8", "dataset": "digits", **(model or {})})
        (d / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "losses": {"ce": 1.0}, "train_acc": 0.5,
                                                     "val_acc": 0.9, "lr": 0.1, "seconds": 1.0,
                                                     "images_per_s": 9.0}) + "\n")
        (d / "config.yaml").write_text("".join(f"{k}: {v}\n" for k, v in recipe.items()))

    run("drkd-5", {"method": "drkd", "epochs": 5, "seed": 0}, {"method": "drkd", "epochs": 5})
    run("drkd-6", {"method": "drkd", "epochs": 6, "seed": 0}, {"method": "drkd", "epochs": 6})
    run("drkd-6-s1", {"method": "drkd", "epochs": 6, "seed": 1, "out": "elsewhere"}, {"method": "drkd", "epochs": 6})
    run("recovered", {"method": "kd", "epochs": 3}, {"method": "kd", "pruning": {"target_macs": 0.5,
                                                                                "method": "structured"}})
    pruned = tmp_path / "runs" / "pruned"
    _write(pruned / "model.json", {"arch": "resnet8", "pruned": {"ratio": 0.3, "method": "l1-unstructured"}})
    _write(pruned / "summary.json", {"best_acc": 0.8, "model": "resnet8", "dataset": "digits"})

    groups = {r.rel.split("/")[-1]: r.group for r in discover(tmp_path).runs}
    assert groups["drkd-5"] == "drkd · epochs 5"
    assert groups["drkd-6"] == groups["drkd-6-s1"] == "drkd · epochs 6"  # seeds (and folders) are repeats
    assert groups["recovered"] == "pruned to 0.5 of its MACs (structured) + kd recovery"
    assert groups["pruned"] == "pruned by 0.3 (l1-unstructured)"


def test_the_readme_tours_layout_fills_every_section(tmp_path):
    """The tour writes its export and bench under runs/, so `edgekd report runs/` finds them beside the runs."""
    import shutil

    make_demo(tmp_path)
    shutil.move(tmp_path / "export", tmp_path / "runs" / "drkd-export")
    shutil.move(tmp_path / "bench", tmp_path / "runs" / "bench")
    page = build_report(tmp_path / "runs").read_text(encoding="utf-8")
    assert 'class="empty"' not in page and page.count("<h2>") >= 8
    assert "drkd-export" in _section(page, "Export artifacts") and "onnx-int8" in _section(page, "Export artifacts")
    assert "ONNX Runtime INT8" in _section(page, "Bench rows")
