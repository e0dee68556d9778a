"""INT8 across the CIFAR student families: accuracy kept by the default `export --int8`, and the speed it buys.

Each family (resnet8x4, wrn_16_2, vgg8, MobileNetV2, ShuffleV1, ShuffleV2) is trained with `edgekd train`'s
defaults on the synthetic set, then exported as a user would, `edgekd export --int8` (accuracy-controlled: at
most 0.5 points lost on the held-out split, ONNX Runtime's bounded remedy search, NNCF's accuracy control for
OpenVINO), with `--qat-epochs` so that distillation-aware QAT runs where the search misses. Then PyTorch eager,
ORT FP32 and every INT8 artifact are timed at batch 1 in interleaved rounds at the same thread count.

    uv run --all-extras python benchmarks/int8.py [--epochs 8] [--qat-epochs 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import time
from pathlib import Path

import torch

from edgekd.config import load_config
from edgekd.export import export_run
from edgekd.settings import EXPORT
from edgekd.train import run_training
from timing import cpu_model, load, time_export

RESULTS = Path(__file__).parent / "results" / "int8.md"
FAMILIES = ("resnet8x4", "wrn_16_2", "vgg8", "MobileNetV2", "ShuffleV1", "ShuffleV2")
DATA = {"data": "synthetic", "data_options": {"count": 2000, "val_count": 500}}
SPEEDUP_TARGET = 1.8  # INT8 over ORT FP32 at batch 1 (the project's export target)


def train(arch: str, run_dir: Path, epochs: int) -> dict:
    return run_training(load_config(overrides={
        **DATA, "model": arch, "epochs": epochs, "batch_size": 64, "lr": 0.05, "seed": 0, "device": "cpu",
        "out": str(run_dir)}))


def search_text(quantization: dict) -> str:
    """What ONNX Runtime's INT8 search (or QAT) settled on, in a few words."""
    if "qat" in quantization:
        return f"QAT {quantization['qat'].get('epochs', '?')} epochs"
    calibration = quantization.get("calibration", {})
    fp32 = quantization.get("fp32_nodes") or []
    tried = len(quantization.get("search", []))
    kept = f"{calibration.get('method', '?')}, {calibration.get('samples', '?')} images"
    return kept + (f", {len(fp32)} layers FP32" if fp32 else "") + f" (attempt {tried})"


def bench_family(arch: str, work: Path, epochs: int, qat_epochs: int, threads: int, iters: int) -> dict:
    run_dir, export_dir = work / f"{arch}-run", work / f"{arch}-export"
    start = time.perf_counter()
    summary = train(arch, run_dir, epochs)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    manifest = export_run(run_dir, export_dir, int8=True, qat_epochs=qat_epochs, progress=False)
    export_s = time.perf_counter() - start

    keys = [k for k, a in manifest["artifacts"].items() if a["precision"] == "int8" or k == "onnx-fp32"]
    latency = time_export(run_dir, export_dir, manifest, keys, threads, iters, warmup=50)
    return {"arch": arch, "summary": summary, "manifest": manifest, "latency": latency, "train_s": train_s,
            "export_s": export_s}


def render(results: list[dict], args: argparse.Namespace, before: str, after: str) -> str:
    import onnxruntime
    import openvino

    lines = [
        "# INT8 across the student families: default `export --int8` on the synthetic set",
        "",
        f"`uv run --all-extras python benchmarks/int8.py --epochs {args.epochs} --qat-epochs {args.qat_epochs} "
        f"--threads {args.threads}`. Machine: {cpu_model()}, {os.cpu_count()} cores ({platform.machine()}); torch "
        f"{torch.__version__}, onnxruntime {onnxruntime.__version__}, openvino {openvino.__version__.split('-')[0]}. "
        f"Each family trained by `edgekd train` (SGD lr 0.05 cosine, batch 64, seed 0) for {args.epochs} epochs on "
        f"synthetic {DATA['data_options']}, then `export --int8 --qat-epochs {args.qat_epochs}` at its defaults "
        f"(max drop {EXPORT.max_drop} points against PyTorch on the 500 held-out images). "
        "Latency: median batch-1 ms over "
        f"{args.iters} runs per runtime in interleaved rounds, {args.threads} thread(s) each. Load average before: "
        f"{before}; after: {after} (shared machine).",
        "",
        "Drop: PyTorch FP32 minus INT8 top-1, in points (one image of 500 is 0.2). Speed-up: ORT FP32 p50 / INT8 p50.",
        "",
        "| student | FP32 top-1 | ORT INT8 top-1 (drop) | ORT search kept | OpenVINO INT8 top-1 (drop) "
        "| size FP32 / INT8 "
        "(MB) | p50 eager / ORT FP32 (ms) | p50 ORT INT8 / OV INT8 (ms) | INT8 vs ORT FP32 | <= 0.5 pts | >= 1.8x |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|:-:|:-:|",
    ]
    verdicts = []
    for r in results:
        m, lat = r["manifest"], r["latency"]
        acc = m["eval"]["torch_accuracy"]
        arts, dropped = m["artifacts"], m.get("dropped", {})

        def cell(key: str, arts: dict = arts, acc: float = acc, dropped: dict = dropped) -> str:
            if key in arts:
                return f"{arts[key]['accuracy']:.4f} ({(acc - arts[key]['accuracy']) * 100:+.2f})"
            return f"not written: {dropped[key]['reason']}" if key in dropped else "–"

        ort = arts.get("onnx-int8", {}).get("quantization", {})
        int8 = [k for k in arts if arts[k]["precision"] == "int8"]
        fastest = min(int8, key=lambda k: lat[k]) if int8 else None
        speedup = lat["onnx-fp32"] / lat[fastest] if fastest else float("nan")
        accurate = bool(int8) and all((acc - arts[k]["accuracy"]) * 100 <= EXPORT.max_drop + 1e-9 for k in int8)
        fast = speedup >= SPEEDUP_TARGET
        verdicts.append((r["arch"], accurate, fast, speedup, fastest))
        lines.append(
            f"| {r['arch']} | {acc:.4f} | {cell('onnx-int8')} | {search_text(ort) if ort else '–'} | "
            f"{cell('openvino-int8')} | {arts['onnx-fp32']['size_bytes'] / 1e6:.2f} / "
            f"{(arts['onnx-int8']['size_bytes'] / 1e6) if 'onnx-int8' in arts else float('nan'):.2f} | "
            f"{lat['pytorch-fp32']:.3f} / {lat['onnx-fp32']:.3f} | "
            f"{lat.get('onnx-int8', float('nan')):.3f} / {lat.get('openvino-int8', float('nan')):.3f} | "
            f"{speedup:.2f}x ({fastest or '–'}) | {'yes' if accurate else '**no**'} | "
            f"{'yes' if fast else '**no**'} |")
    lines += ["", "Training and export wall time (s): " + ", ".join(
        f"{r['arch']} {r['train_s']:.0f} + {r['export_s']:.0f}" for r in results) + "."]
    lines += ["", "## What it says", ""]
    lines.append("- Within 0.5 points on every INT8 artifact written: "
                 + (", ".join(a for a, ok, *_ in verdicts if ok) or "none") + "; not: "
                 + (", ".join(a for a, ok, *_ in verdicts if not ok) or "none") + ".")
    lines.append(f"- Fastest INT8 at least {SPEEDUP_TARGET}x ORT FP32: "
                 + (", ".join(f"{a} ({s:.2f}x)" for a, _, f, s, _ in verdicts if f) or "none") + "; below: "
                 + (", ".join(f"{a} ({s:.2f}x)" for a, _, f, s, _ in verdicts if not f) or "none") + ".")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--qat-epochs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of every runtime when timing")
    p.add_argument("--iters", type=int, default=400)
    p.add_argument("--work", type=Path, default=Path("/tmp/edgekd-int8-bench"), help="scratch dir (replaced)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    before = load()
    results = []
    for arch in args.families.split(","):
        results.append(bench_family(arch, args.work, args.epochs, args.qat_epochs, args.threads, args.iters))
        print(f"{arch}: done", flush=True)
    text = render(results, args, before, load())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
