"""Run ONNX models on one .npy batch and save their logits: the only code that runs in the emulated aarch64 Python.

It needs nothing but onnxruntime and numpy (no torch, no edgekd), so it runs unchanged on any device with the
device-side wheels. Usage::

    python arm64_runner.py --input x.npy --out DIR fp32=model.onnx int8=model_int8.onnx

writes ``DIR/<name>.npy`` (float32 logits, one row per input row) for each model and ``DIR/info.json`` (machine,
Python, onnxruntime and numpy versions, providers, seconds per model). The seconds are marked ``emulated`` when
the launcher says it runs under an emulator (``EDGEKD_EMULATED``), so they are never read as device latency.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort


def run_model(path: str, batch: np.ndarray, threads: int) -> tuple[np.ndarray, float]:
    """Logits of ``batch`` through the model at ``path`` on the CPU provider, and the seconds ``run`` took."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    start = time.perf_counter()
    logits = session.run(None, {name: batch})[0]
    return np.asarray(logits, dtype=np.float32), time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="float32 .npy batch in the model's input layout")
    parser.add_argument("--out", required=True, help="folder for <name>.npy logits and info.json")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("models", nargs="+", metavar="NAME=MODEL.onnx")
    args = parser.parse_args(argv)

    pairs = [m.split("=", 1) for m in args.models]
    bad = [m for m, p in zip(args.models, pairs) if len(p) != 2 or not p[0] or not p[1]]
    if bad:
        parser.error(f"models must be given as NAME=PATH, got {bad}")
    batch = np.load(args.input).astype(np.float32, copy=False)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    seconds = {}
    for name, path in pairs:
        logits, seconds[name] = run_model(path, batch, args.threads)
        np.save(out / f"{name}.npy", logits)
    info = {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "providers": ort.get_available_providers(),
        "batch": int(batch.shape[0]),
        "threads": args.threads,
        "seconds": seconds,
        "emulated": bool(os.environ.get("EDGEKD_EMULATED")),
        "emulator": os.environ.get("EDGEKD_EMULATED") or None,
    }
    (out / "info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
