"""edgekd bench: statistics, fastest/speed-up selection, the report files, and real runs on tiny exports."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from edgekd.contracts.bench_rows import fastest, read_rows
from edgekd.contracts.manifest import artifact_entry, load_manifest
from edgekd.errors import EdgeKDError
from edgekd.export import bench, bench_report
from edgekd.export.bench import add_speedups, bench_argv, latency_stats, run_bench, time_calls
from edgekd.export.bench_report import MD_HEADER, merge_reports, render_markdown, write_report

REPO = Path(__file__).resolve().parents[1]


def build_tiny_export(d: Path) -> Path:
    """An export dir with ONNX FP32/INT8 and OpenVINO FP32 of a 3x16x16 conv net (no OpenVINO INT8, no source run)."""
    import onnx
    import openvino as ov
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(np.zeros(8, np.float32), "b"),
        numpy_helper.from_array(rng.standard_normal((8, 10)).astype(np.float32), "fw"),
        numpy_helper.from_array(np.zeros(10, np.float32), "fb"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], weights,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), d / "model.onnx")

    class Calibration(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(d / "model.onnx"), str(d / "model_int8.onnx"), Calibration(), quant_format=QuantFormat.QDQ)
    ov.save_model(ov.convert_model(str(d / "model.onnx")), str(d / "model.xml"))
    artifacts = {
        "onnx-fp32": artifact_entry(d, ["model.onnx"], format="onnx", precision="fp32", accuracy=0.95),
        "onnx-int8": artifact_entry(d, ["model_int8.onnx"], format="onnx", precision="int8", accuracy=0.94),
        "openvino-fp32": artifact_entry(d, ["model.xml", "model.bin"], format="openvino", precision="fp32",
                                        accuracy=0.95),
    }
    manifest = {
        "model": "tiny", "arch": "tiny", "input": {"name": "input", "shape": [None, 3, 16, 16]},
        "preprocessing": {"resize": [16, 16], "mean": [0, 0, 0], "std": [1, 1, 1]},
        "class_names": [str(i) for i in range(10)], "eval": {"torch_accuracy": 0.95}, "artifacts": artifacts,
    }
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory) -> Path:
    return build_tiny_export(tmp_path_factory.mktemp("bench") / "export")


@pytest.fixture(scope="module")
def tiny_rows(tiny_export) -> list[dict]:
    return run_bench(tiny_export, precisions=("fp32", "int8"), batches=(1, 2), warmup=1, iters=5, progress=False)


def fake_row(runtime, precision, batch, p50, p99=None, status="ok", threads=None, host="a", emulated=False) -> dict:
    """A bench row with made-up latencies, for the selection and report logic."""
    measured = status == "ok"
    return {
        "runtime": runtime, "precision": precision, "batch": batch, "threads": threads, "status": status,
        "p50_ms": p50 if measured else None, "p90_ms": (p50 * 1.1 if measured else None),
        "p99_ms": (p99 if p99 is not None else p50 * 1.5) if measured else None,
        "mean_ms": p50 if measured else None, "iters": 100 if measured else None,
        "throughput_ips": batch * 1000 / p50 if measured else None, "size_mb": 1.2, "accuracy": 0.9,
        "speedup": None, "baseline": None, "artifact": f"{runtime}-{precision}", "options": {},
        "machine": {"host": host, "cpu": "Test CPU", "arch": "x86_64", "cores": 4, "os": "Linux", "versions": {}},
        "emulated": emulated,
    }


def test_latency_stats_of_known_samples():
    # sorted: 1..10; linear percentile at q sits at index q*(n-1) = 9q:
    # p50 -> 4.5 -> 5 + 0.5*(6-5) = 5.5; p90 -> 8.1 -> 9 + 0.1*(10-9) = 9.1; p99 -> 8.91 -> 9.91; mean 55/10 = 5.5
    stats = latency_stats([10, 1, 9, 2, 8, 3, 7, 4, 6, 5])
    assert stats == pytest.approx({"p50_ms": 5.5, "p90_ms": 9.1, "p99_ms": 9.91, "mean_ms": 5.5})
    # two samples 2 and 4: index 0.5 -> 3, 0.9 -> 3.8, 0.99 -> 3.98
    assert latency_stats([4.0, 2.0]) == pytest.approx({"p50_ms": 3.0, "p90_ms": 3.8, "p99_ms": 3.98, "mean_ms": 3.0})
    with pytest.raises(ValueError):
        latency_stats([])


def test_time_calls_counts_and_measures():
    calls = []
    ms = time_calls(lambda: calls.append(1), warmup=3, iters=7, seconds=100.0)
    assert len(ms) == 7 and len(calls) == 10 and (ms >= 0).all()
    ms = time_calls(lambda: time.sleep(0.002), warmup=0, iters=None, seconds=0.001)
    assert len(ms) == bench.MIN_TIMED_ITERS  # the time box is spent, the minimum count is not
    assert ms.min() >= 2.0 and ms.max() < 1000


def test_fastest_ignores_failed_and_emulated_rows_and_breaks_ties_on_p99():
    rows = [
        fake_row("ort", "fp32", 1, 2.0),
        fake_row("ort", "int8", 1, 1.0, p99=3.0),
        fake_row("openvino", "int8", 1, 1.0, p99=2.0),
        fake_row("openvino", "fp32", 1, 0.1, status="error: boom"),
        fake_row("ort", "int8", 1, 0.05, emulated=True),
        fake_row("ort", "fp32", 8, 9.0),
        fake_row("openvino", "int8", 8, 4.0),
    ]
    best = fastest(rows)
    assert list(best) == [1, 8]
    assert (best[1]["runtime"], best[1]["precision"], best[1]["p99_ms"]) == ("openvino", "int8", 2.0)
    assert (best[8]["runtime"], best[8]["p50_ms"]) == ("openvino", 4.0)
    assert fastest([fake_row("ort", "fp32", 1, 1.0, status="skipped: x")]) == {}


def test_speedups_use_torch_then_ort_fp32_within_one_machine():
    rows = add_speedups([
        fake_row("torch", "fp32", 1, 6.0),
        fake_row("ort", "fp32", 1, 3.0),
        fake_row("ort", "int8", 1, 1.5),
        fake_row("ort", "int8", 1, 9.0, status="error: x"),
        fake_row("ort", "fp32", 1, 4.0, host="b"),
        fake_row("openvino", "int8", 1, 1.0, host="b"),
        fake_row("openvino", "int8", 1, 1.0, host="c"),
    ])
    assert [r["speedup"] for r in rows] == [1.0, 2.0, 4.0, None, 1.0, 4.0, None]
    assert [r["baseline"] for r in rows] == ["torch fp32"] * 4 + ["ort fp32"] * 2 + [None]


def test_report_files_are_written_and_parseable(tmp_path):
    rows = add_speedups([
        fake_row("torch", "fp32", 1, 6.0),
        fake_row("ort", "fp32", 1, 3.0),
        fake_row("ort", "int8", 1, 1.5),
        fake_row("openvino", "int8", 1, 0.7, status="skipped: no openvino int8 artifact in this export"),
        fake_row("ort", "fp32", 4, 8.0),
        fake_row("ort", "int8", 4, 4.0),
        fake_row("openvino", "fp32", 1, 0.1, emulated=True),
    ])
    paths = write_report(rows, tmp_path / "report", "tiny bench")
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["bench.json", "bench.md", "bench.png"]

    doc = json.loads(paths["json"].read_text())
    assert {"title", "created", "machine", "machines", "fastest", "rows"} <= doc.keys()
    assert doc["machine"]["cpu"] == "Test CPU" and len(doc["rows"]) == len(rows)
    for row in doc["rows"]:
        assert {"runtime", "precision", "batch", "threads", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput_ips",
                "size_mb", "accuracy", "machine", "emulated", "status", "speedup"} <= row.keys()
    assert [(f["batch"], f["runtime"], f["precision"]) for f in doc["fastest"]] == [
        (1, "ort", "int8"), (4, "ort", "int8")]
    assert read_rows(paths["json"]) == doc["rows"]

    md = paths["md"].read_text().splitlines()
    header = "| " + " | ".join(MD_HEADER) + " |"
    assert md.count(header) == 1
    table = md[md.index(header) + 2 : md.index(header) + 2 + len(rows)]
    assert all(line.startswith("| ") for line in table) and md[md.index(header) + 2 + len(rows)] == ""
    assert table[2] == "| ONNX Runtime INT8 | 1 | auto | ✅ | 1.20 | 90.00% | 1.500 | 2.250 | 667 | 4.00× |"
    assert "❎ skipped: no openvino int8 artifact" in table[3]
    assert table[6].startswith("| OpenVINO FP32 (emulated) | 1 | auto | ✅ emulated |")
    fastest_lines = [line for line in md if line.startswith("- **Fastest")]
    assert fastest_lines == [
        "- **Fastest at batch 1: ONNX Runtime INT8** (threads auto, p50 1.500 ms, 4.00× PyTorch FP32).",
        "- **Fastest at batch 4: ONNX Runtime INT8** (threads auto, p50 4.000 ms, 2.00× ONNX Runtime FP32).",
    ]
    assert any("not the device's latency" in line for line in md)

    png = paths["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    width, height = struct.unpack(">II", png[16:24])
    assert width >= 1000 and height >= 500


def test_markdown_of_merged_machines_has_a_machine_column():
    local = add_speedups([fake_row("ort", "fp32", 1, 3.0), fake_row("ort", "int8", 1, 1.0)])
    remote = add_speedups([fake_row("ort", "fp32", 1, 30.0, host="pi"), fake_row("ort", "int8", 1, 12.0, host="pi")])
    merged = merge_reports(local, remote)
    assert [r["machine"]["host"] for r in merged] == ["a", "a", "pi", "pi"]
    md = render_markdown(merged, "two machines")
    assert "| Machine | Format |" in md and "| pi | ONNX Runtime INT8 |" in md
    assert "- **Fastest on a at batch 1: ONNX Runtime INT8**" in md
    assert ("- **Fastest on pi at batch 1: ONNX Runtime INT8** (threads auto, p50 12.0 ms, 2.50× ONNX Runtime FP32)."
            in md)
    with pytest.raises(EdgeKDError, match="without machine info"):
        merge_reports(local, [{**remote[0], "machine": None}])


def test_real_bench_on_tiny_export(tiny_export, tiny_rows):
    manifest = load_manifest(tiny_export)
    by = {(r["runtime"], r["precision"], r["batch"]): r for r in tiny_rows}
    assert len(tiny_rows) == 10  # (ort, openvino) x (fp32, int8) x batches (1, 2) + torch fp32 x (1, 2)
    for key in ("onnx-fp32", "onnx-int8", "openvino-fp32"):
        runtime = "ort" if key.startswith("onnx") else "openvino"
        for batch in (1, 2):
            r = by[(runtime, key.split("-")[1], batch)]
            assert r["status"] == "ok" and r["artifact"] == key and r["iters"] == 5
            assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
            # mean_ms is reported to 4 decimals: at tens of microseconds that alone moves the ratio ~0.1 %
            rounding = 5e-5 / r["mean_ms"]
            assert r["throughput_ips"] == pytest.approx(batch * 1000 / r["mean_ms"], rel=1e-3 + rounding)
            assert r["size_mb"] == pytest.approx(manifest["artifacts"][key]["size_bytes"] / 1e6)
            assert r["accuracy"] == manifest["artifacts"][key]["accuracy"]
            assert r["machine"]["cores"] >= 1 and r["machine"]["arch"] and r["emulated"] is False
    assert by[("openvino", "fp32", 1)]["options"] == {"hint": "LATENCY", "streams": None}
    assert by[("openvino", "int8", 1)]["status"] == "skipped: no openvino int8 artifact in this export"
    assert by[("torch", "fp32", 1)]["status"] == (
        "skipped: the manifest names no source run to load the PyTorch model from")
    ort_fp32 = by[("ort", "fp32", 2)]
    assert ort_fp32["speedup"] == 1.0 and ort_fp32["baseline"] == "ort fp32"
    int8 = by[("ort", "int8", 2)]
    assert int8["speedup"] == pytest.approx(ort_fp32["p50_ms"] / int8["p50_ms"], rel=1e-2)
    assert set(fastest(tiny_rows)) == {1, 2}


def test_threads_and_openvino_options_reach_the_rows(tiny_export):
    rows = run_bench(tiny_export, runtimes=("openvino",), precisions=("fp32",), threads=(1, None), warmup=0, iters=2,
                     ov_hint="throughput", ov_streams=1, progress=False)
    assert [(r["threads"], r["status"]) for r in rows] == [(1, "ok"), (None, "ok")]
    assert rows[0]["options"] == {"hint": "THROUGHPUT", "streams": 1}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"runtimes": ("tensorrt",)}, "unknown runtime tensorrt"),
        ({"precisions": ("int4",)}, "unknown precision int4"),
        ({"batches": (0,)}, "batch sizes"),
        ({"threads": (0,)}, "threads"),
        ({"batches": (100_000_000,)}, "batch sizes must be integers from 1 to 4096"),  # was a 1 TiB allocation
        ({"threads": (100_000,)}, "threads must be integers from 1 to 1024"),  # ORT hung creating them
        ({"ov_hint": "fast"}, "OpenVINO hint"),
        ({"seconds": 0}, "seconds > 0"),
    ],
)
def test_bad_options_raise_edgekd_error(tiny_export, options, message):
    with pytest.raises(EdgeKDError, match=message):
        run_bench(tiny_export, progress=False, **options)


def test_not_an_export_dir(tmp_path):
    with pytest.raises(EdgeKDError, match="no manifest.json"):
        run_bench(tmp_path, progress=False)
    with pytest.raises(EdgeKDError, match=f"export dir {tmp_path / 'missing'} does not exist"):
        run_bench(tmp_path / "missing", progress=False)


def test_several_exports_are_timed_together_and_each_row_names_its_own(tiny_export, tmp_path, monkeypatch, capsys):
    other = shutil.copytree(tiny_export, tmp_path / "other" / "export")  # the same name, another folder
    rows = run_bench([tiny_export, other], runtimes=("ort",), precisions=("fp32", "int8"), warmup=0, iters=6,
                     progress=False)
    assert [(r["export"], r["precision"]) for r in rows] == [
        (str(tiny_export), "fp32"), (str(tiny_export), "int8"), (str(other), "fp32"), (str(other), "int8")]
    assert all(r["status"] == "ok" and len(r["round_p50_ms"]) == 2 for r in rows)
    for first, second in (rows[:2], rows[2:]):  # each export's speed-up is over its own FP32 row
        assert second["speedup"] == pytest.approx(first["p50_ms"] / second["p50_ms"], rel=1e-2)
    assert run_bench(tiny_export, runtimes=("ort",), precisions=("fp32",), iters=3, progress=False)[0]["export"] is None

    from edgekd.cli import main

    monkeypatch.setattr(sys, "argv", ["edgekd", "bench", str(tiny_export), str(other), "--runtimes", "ort",
                                      "--precisions", "int8", "--iters", "3", "--out", str(tmp_path / "r")])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 0, capsys.readouterr().err
    md = (tmp_path / "r" / "bench.md").read_text()
    assert f"ONNX Runtime INT8 ({tiny_export})" in md and f"ONNX Runtime INT8 ({other})" in md

    smaller = shutil.copytree(tiny_export, tmp_path / "smaller")
    manifest = json.loads((smaller / "manifest.json").read_text())
    manifest["input"]["shape"] = [None, 3, 8, 8]
    (smaller / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EdgeKDError, match=r"export dirs timed together must take the same input: .* takes "
                                          r"\[3, 16, 16\], .*smaller takes \[3, 8, 8\]"):
        run_bench([tiny_export, smaller], progress=False)


def test_corrupt_artifact_is_an_error_row_and_the_rest_still_runs(tiny_export, tmp_path):
    broken = shutil.copytree(tiny_export, tmp_path / "broken")
    with open(broken / "model.onnx", "ab") as f:
        f.write(b"\0")
    rows = run_bench(broken, runtimes=("ort",), warmup=0, iters=2, progress=False)
    assert rows[0]["status"].startswith("error: artifact onnx-fp32") and "sha256" in rows[0]["status"]
    assert rows[0]["p50_ms"] is None and rows[0]["speedup"] is None
    assert rows[1]["status"] == "ok" and rows[1]["speedup"] is None  # no measured baseline to compare with


def test_bench_command_exits_1_when_an_artifact_failed_and_keeps_the_report(tiny_export, tmp_path, monkeypatch, capsys):
    from edgekd.cli import main

    broken = shutil.copytree(tiny_export, tmp_path / "broken")
    with open(broken / "model.onnx", "ab") as f:
        f.write(b"\0")

    def bench_cli(*args: str) -> tuple[int, str]:
        monkeypatch.setattr(
            sys, "argv", ["edgekd", "bench", str(broken), "--runtimes", "ort", "--iters", "2", "--warmup", "0", *args])
        with pytest.raises(SystemExit) as exc:
            main()
        captured = capsys.readouterr()
        return exc.value.code, captured.out, captured.err

    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = bench_cli("--out", str(tmp_path / "r"), "--runtimes", "ort,torch", "--threads", "1,2")
    assert code == 1 and "failed: onnx-fp32 fp32 batch 1: error: artifact onnx-fp32" in err
    statuses = [r["status"] for r in read_rows(tmp_path / "r" / "bench.json")]
    assert statuses[:4] == ["error: " + statuses[0][7:]] * 2 + ["ok"] * 2 and statuses[4].startswith("skipped")
    # the terminal table: every column whole in 80 columns, short statuses, the skip reason in full below
    assert "…" not in out and max(len(line) for line in out.splitlines()) <= 80, out
    header = next(line for line in out.splitlines() if "format" in line).split()
    assert header == ["format", "batch", "threads", "MB", "top-1", "p50", "ms", "p99", "ms", "img/s", "speed-up"]
    assert out.count("❌") == 2 and " ".join(out.split()).count(f"❎ PyTorch FP32: {statuses[4]}") == 1
    (tmp_path / "afile").write_text("x")
    assert bench_cli("--out", str(tmp_path / "afile"))[0] == 2  # refused before measuring anything
    code, _, err = bench_cli("--seconds", "nan", "--out", str(tmp_path / "r2"))
    assert code == 2 and "seconds > 0" in err and not (tmp_path / "r2").exists()


def test_bench_command_with_nothing_measurable_is_one_line_and_writes_nothing(tiny_export, tmp_path, monkeypatch,
                                                                              capsys):
    from edgekd.cli import main

    broken = shutil.copytree(tiny_export, tmp_path / "newer")
    manifest = json.loads((broken / "manifest.json").read_text())
    for entry in manifest["artifacts"].values():
        entry["format"] = "tflite"  # from a newer edgekd: skipped, not a crash
    (broken / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(sys, "argv",
                        ["edgekd", "bench", str(broken), "--runtimes", "ort", "--out", str(tmp_path / "r")])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and not (tmp_path / "r").exists()
    assert f"error: nothing in {broken} could be measured: skipped: no ort fp32 artifact" in " ".join(err.split())


def test_dropped_artifact_says_why(tiny_export, tmp_path):
    d = shutil.copytree(tiny_export, tmp_path / "dropped")
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["dropped"] = {
        "openvino-int8": {"format": "openvino", "precision": "int8", "reason": "accuracy drop 2.1 points > 0.5"},
    }
    (d / "manifest.json").write_text(json.dumps(manifest))
    rows = run_bench(d, runtimes=("openvino",), precisions=("int8",), warmup=0, iters=2, progress=False)
    assert rows[0]["status"] == "skipped: openvino-int8 was dropped at export: accuracy drop 2.1 points > 0.5"


def test_bench_argv_round_trips_through_the_device_command(monkeypatch, tmp_path):
    """What `edgekd bench --remote` sends is what the device's `python -m edgekd.export.bench` hands to run_bench."""
    options = {"runtimes": ["ort", "openvino"], "precisions": ["int8"], "batches": [1, 8], "threads": [None, 2],
               "warmup": 3, "iters": 7, "seconds": 0.5, "ov_hint": "THROUGHPUT", "ov_streams": 2, "progress": False,
               "emulated": True}
    parsed = {}
    monkeypatch.setattr(bench, "run_bench", lambda export_dir, **kwargs: parsed.update(kwargs) or [])
    monkeypatch.setattr(bench_report, "write_json", lambda rows, path, title: path)
    assert bench.main(["exp", "--json", str(tmp_path / "b.json"), *bench_argv(options)]) == 0
    assert parsed == options
    with pytest.raises(EdgeKDError, match="unknown bench option"):
        bench_argv({"turbo": True})


def test_module_entry_writes_the_report(tiny_export, tmp_path):
    rc = bench.main([str(tiny_export), "--out", str(tmp_path / "r"), "--runtimes", "ort", "--precisions", "int8",
                     "--iters", "3", "--warmup", "0", "--no-progress", "--emulated"])
    assert rc == 0
    rows = read_rows(tmp_path / "r" / "bench.json")
    assert [(r["runtime"], r["precision"], r["status"], r["emulated"]) for r in rows] == [("ort", "int8", "ok", True)]
    assert bench.main([str(tmp_path), "--json", str(tmp_path / "x.json"), "--no-progress"]) == 2
    assert not (tmp_path / "x.json").exists()


BLOCK_TORCH = textwrap.dedent(
    """
    import importlib.abc, sys

    class BlockTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, BlockTorch())
    from edgekd.export.bench import main
    rc = main(sys.argv[1:])
    assert "torch" not in sys.modules
    sys.exit(rc)
    """
)


def test_bench_runs_without_torch(tiny_export, tmp_path):
    # a source run that exists, so the torch row is skipped for want of torch and not for want of weights
    export = shutil.copytree(tiny_export, tmp_path / "export")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.safetensors").write_bytes(b"weights")
    manifest = json.loads((export / "manifest.json").read_text())
    manifest["source_run"] = str(tmp_path / "run")
    (export / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH, str(export), "--json", str(out), "--runtimes", "ort,torch",
         "--precisions", "fp32", "--iters", "3", "--warmup", "0", "--no-progress"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rows = read_rows(out)
    assert [(r["runtime"], r["status"]) for r in rows] == [("ort", "ok"), ("torch", "skipped: torch not installed")]
    assert rows[0]["speedup"] == 1.0 and rows[1]["size_mb"] == pytest.approx(7e-6)


@pytest.mark.slow
def test_bench_of_a_real_export_with_the_torch_baseline(export_dir, tmp_path):
    manifest = load_manifest(export_dir)
    rows = run_bench(export_dir, precisions=("fp32", "int8"), batches=(1, 4), warmup=2, iters=10, progress=False)
    by = {(r["runtime"], r["precision"], r["batch"]): r for r in rows}
    measured = {key: a for key, a in manifest["artifacts"].items() if a["precision"] in ("fp32", "int8")}
    assert measured, "the export fixture wrote no FP32/INT8 artifact"
    for key, a in measured.items():
        runtime = "ort" if a["format"] == "onnx" else "openvino"
        for batch in (1, 4):
            r = by[(runtime, a["precision"], batch)]
            assert (r["status"], r["artifact"], r["accuracy"]) == ("ok", key, a["accuracy"])
    for key in manifest.get("dropped", {}):
        runtime = "ort" if key.startswith("onnx") else "openvino"
        assert by[(runtime, key.split("-")[1], 1)]["status"].startswith(f"skipped: {key} was dropped at export")
    for batch in (1, 4):
        torch_row = by[("torch", "fp32", batch)]
        # PyTorch eager is the baseline unless its rounds disagreed on this busy machine; then the next steady FP32
        fp32 = [by[(name, "fp32", batch)] for name in ("torch", "ort", "openvino")
                if by.get((name, "fp32", batch), {}).get("status") == "ok"]
        base = next((r for r in fp32 if not r["unstable"]), fp32[0])
        assert torch_row["status"] == "ok" and base["speedup"] == 1.0
        assert torch_row["baseline"] == f"{base['runtime']} fp32"
        assert torch_row["accuracy"] == manifest["eval"]["torch_accuracy"]
        assert torch_row["machine"]["versions"]["torch"]
        ok = [r for r in rows if r["batch"] == batch and r["status"] == "ok"]
        for r in ok:
            # speed-ups are rounded to 3 decimals: a slow row's 0.034 stands for 0.0344
            assert r["speedup"] == pytest.approx(base["p50_ms"] / r["p50_ms"], rel=1e-2, abs=5e-4)
            assert len(r["round_p50_ms"]) == 3 and r["spread"] >= 0  # 10 calls: 3 rounds of 4
    run_dir = Path(manifest["source_run"])
    assert by[("torch", "fp32", 1)]["size_mb"] == pytest.approx((run_dir / "model.safetensors").stat().st_size / 1e6)
    paths = write_report(rows, tmp_path, "digits resnet8")
    steady = {r["batch"] for r in rows if r["status"] == "ok" and not r["unstable"]}
    assert len(json.loads(paths["json"].read_text())["fastest"]) == len(steady) >= 1


class _Clock:
    """A stand-in for ``time`` in edgekd.export.bench: each fake call advances it by the latency it is given."""

    def __init__(self):
        self.ns, self.calls = 0, []

    def perf_counter_ns(self):
        return self.ns

    def call(self, key, ms):
        def run():
            self.calls.append(key)
            self.ns += int(ms(len([k for k in self.calls if k == key])) * 1e6)
        return run


def test_interleaved_rounds_catch_a_disturbed_configuration_and_measure_it_again(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(bench, "time", clock)
    per_round = 4  # 20 timed calls in 5 rounds, after 2 warm-up calls and 1 untimed call
    calls = {
        "steady": clock.call("steady", lambda n: 1.0),
        # 10x slower during its second round of the first measurement only: a burst of load
        "burst": clock.call("burst", lambda n: 10.0 if 3 + per_round < n <= 3 + 2 * per_round else 1.0),
        # slow in every other round, both times: noise that no second measurement removes
        "erratic": clock.call("erratic", lambda n: 3.0 if ((n - 4) // per_round) % 2 else 1.0),
    }
    failures = {}
    calls["broken"] = lambda: (_ for _ in ()).throw(RuntimeError("bad input"))
    timings = bench.time_interleaved(calls, warmup=2, iters=20, seconds=1.0, tolerance=0.25,
                                     failed=lambda k, e: failures.setdefault(k, str(e)))
    assert failures == {"broken": "bad input"} and set(timings) == {"steady", "burst", "erratic"}
    assert timings["steady"].spread == 0 and not timings["steady"].unstable and len(timings["steady"].rounds) == 5
    assert timings["burst"].round_p50_ms == [1.0] * 5 and not timings["burst"].unstable  # measured again
    assert timings["erratic"].unstable and timings["erratic"].spread == pytest.approx(2 / 3)  # (3 - 1) / 3
    timed = [k for k in clock.calls[3 * 3:]]  # after each configuration's warm-up
    firsts = [timed[i] for i in range(0, 3 * 5 * per_round, 3 * per_round)]
    assert firsts[:3] == ["steady", "burst", "erratic"]  # each round starts with the next configuration


def test_an_unstable_baseline_gives_way_and_unstable_rows_are_marked_and_never_fastest():
    def row(runtime, precision, p50, unstable=False):
        return {"runtime": runtime, "precision": precision, "batch": 1, "threads": None, "status": "ok",
                "p50_ms": p50, "p99_ms": p50 * 1.1, "machine": {"host": "h", "cpu": "c"}, "emulated": False,
                "unstable": unstable, "speedup": None, "baseline": None, "artifact": None, "accuracy": None,
                "size_mb": None, "throughput_ips": None}

    rows = add_speedups([row("torch", "fp32", 286.0, unstable=True), row("ort", "fp32", 0.4),
                         row("ort", "int8", 0.2), row("openvino", "int8", 0.1, unstable=True)])
    assert [r["baseline"] for r in rows] == ["ort fp32"] * 4  # not PyTorch's burst: no 1430x speed-up
    assert rows[2]["speedup"] == 2.0 and fastest(rows)[1]["runtime"] == "ort"
    text = render_markdown(rows, "t")
    assert "| ~286.0 |" in text and "| ~4.00× |" in text and bench_report.UNSTABLE_NOTE in text
