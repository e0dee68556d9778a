"""Which torch.onnx exporter edgekd's FP32 graph should come from: the TorchScript one (``dynamo=False``, deprecated
upstream) or the ``torch.export`` one (``dynamo=True``), measured side by side on the same models.

For each model and exporter, in a fresh process each (the dynamo exporter's cost is mostly first-call setup, which
every ``edgekd export`` pays once): the export's wall time, whether the graph passes onnx's full check and runs a
batch of 4 (a dynamic batch axis), the largest logit difference to PyTorch, the file size, and ONNX Runtime's
batch-1 latency of the two graphs measured in interleaved rounds in this process.

    uv run --locked --all-extras python benchmarks/onnx_exporter.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from timing import cpu_model, load, time_runners

MODELS = ("resnet8", "resnet8x4", "wrn_16_2", "MobileNetV2", "ShuffleV2")

CHILD = """
import json, sys, time, warnings
import numpy as np, onnx, onnxruntime as ort, torch
from edgekd.models import create_model
name, dynamo, path = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
torch.manual_seed(0)
model = create_model(name, 100).eval()
x = torch.randn(4, 3, 32, 32)
start = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    kw = ({"dynamic_shapes": ({0: torch.export.Dim("batch")},), "external_data": False} if dynamo else
          {"dynamic_axes": {"input": {0: "batch"}, "logits": {0: "batch"}}})
    torch.onnx.export(model, (x[:1],), path, input_names=["input"], output_names=["logits"], opset_version=18,
                      dynamo=dynamo, **kw)
seconds = time.perf_counter() - start
onnx.checker.check_model(onnx.load(path), full_check=True)
session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
with torch.no_grad():
    ref = model(x).numpy()
out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
ops = sorted({n.op_type for n in onnx.load(path).graph.node})
print(json.dumps({"seconds": seconds, "max_diff": float(np.abs(out - ref).max()), "ops": ops}))
"""


def export(name: str, dynamo: bool, path: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, name, "1" if dynamo else "0", str(path)],
                          capture_output=True, text=True, check=False)
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1][:120]}
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "mb": path.stat().st_size / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--iters", type=int, default=800)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "onnx-exporter.md")
    args = parser.parse_args()
    import onnxruntime as ort
    import torch

    before = load()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            paths = {d: Path(tmp) / f"{name}-{'dynamo' if d else 'torchscript'}.onnx" for d in (False, True)}
            result = {d: export(name, d, p) for d, p in paths.items()}
            runners = {}
            for d, p in paths.items():
                if "error" not in result[d]:
                    opts = ort.SessionOptions()
                    opts.intra_op_num_threads = 1
                    session = ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
                    runners[d] = (lambda s: lambda x: s.run(None, {s.get_inputs()[0].name: x}))(session)
            x = np.random.default_rng(0).standard_normal((1, 3, 32, 32), dtype=np.float32)
            p50 = time_runners(runners, x, args.iters, warmup=50) if runners else {}
            for d in (False, True):
                rows.append((name, d, result[d], p50.get(d)))
                print(name, "dynamo" if d else "torchscript", result[d], p50.get(d), flush=True)
    lines = [
        "# ONNX exporter: TorchScript (`dynamo=False`) against torch.export (`dynamo=True`)",
        "",
        f"`benchmarks/onnx_exporter.py`, torch {torch.__version__}, onnxruntime {ort.__version__}, opset 18; "
        f"{cpu_model()}, load average before: {before}. Each export in a fresh process (fresh-init models, 100 "
        "classes, 32x32 input, batch axis dynamic, one self-contained file as edgekd writes); max |Δ| against "
        "PyTorch on a batch of 4; ORT batch-1 p50 with "
        f"1 thread, {args.iters} calls per graph in 8 interleaved rounds.",
        "",
        "| model | exporter | export s | max abs diff | MB | ORT p50 ms | ops only in this graph |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    by = {(n, d): r for n, d, r, _ in rows}
    for name, d, r, ms in rows:
        label = "dynamo" if d else "torchscript"
        if "error" in r:
            lines.append(f"| {name} | {label} | failed: {r['error']} | | | | |")
            continue
        other = by[(name, not d)]
        only = sorted(set(r["ops"]) - set(other.get("ops", [])))
        lines.append(f"| {name} | {label} | {r['seconds']:.2f} | {r['max_diff']:.1e} | {r['mb']:.3f} | "
                     f"{ms:.3f} | {', '.join(only) or '—'} |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
