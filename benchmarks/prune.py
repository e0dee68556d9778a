"""Prune, then recover: accuracy unpruned / pruned / recovered over seeds, and the exported models' latency.

For each (model, dataset) a CE run is trained per seed with `edgekd train`'s trainer; `edgekd prune
--target-macs F --recover-epochs N` (the product's own path) then removes 30 %, 50 % and 70 % of its MACs and
distils the pruned model from the unpruned one. Seed 0's unpruned and recovered runs are exported with INT8
(ONNX Runtime) and timed at batch 1, FP32 and INT8, all in interleaved rounds in one process.

    .venv/bin/python benchmarks/prune.py            # writes benchmarks/results/prune.md
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from edgekd.config import load_config
from edgekd.export import export_run
from edgekd.recover import prune_and_recover
from edgekd.runtimes import open_artifact
from edgekd.settings import PRUNE
from edgekd.train import run_training
from timing import cpu_model, load, time_runners

RESULTS = Path(__file__).parent / "results" / "prune.md"
DATA = {
    "digits": {"data": "digits", "data_options": {}},
    "synthetic": {"data": "synthetic", "data_options": {"count": 1000, "val_count": 500}},
}
# (model, dataset, seeds): the must-show case gets three seeds, the others two (minutes of one CPU core each)
CASES = [("resnet20", "digits", 3), ("resnet8x4", "digits", 2), ("resnet20", "synthetic", 2),
         ("resnet8x4", "synthetic", 2)]
# (fraction of the MACs left, channel multiple): 30 %, 50 % and 70 % removed at the default multiple of 16, and at 8
# where 16 may stop short (resnet20's 16-channel stage cannot shrink) or to compare the two at the same target
VARIANTS = ((0.7, 16), (0.5, 16), (0.5, 8), (0.3, 16), (0.3, 8))
TARGETS = {"points_within": 1.0, "int8_speedup": 1.3}  # the recovered resnet20 on digits at 50 % removed


def bench_case(work: Path, arch: str, dataset: str, seeds: list[int], epochs: int, recover_epochs: int,
               recover_lr: float) -> dict:
    runs: dict[tuple[float, int], list[dict]] = {v: [] for v in VARIANTS}
    base_dirs: list[Path] = []
    for seed in seeds:
        base = work / f"{arch}-{dataset}-s{seed}"
        cfg = load_config(overrides={**DATA[dataset], "model": arch, "epochs": epochs, "seed": seed, "out": str(base)})
        run_training(cfg, show_progress=False)
        base_dirs.append(base)
        for keep, multiple in VARIANTS:
            recover = {"epochs": recover_epochs, "lr": recover_lr, "seed": seed}
            r = prune_and_recover(base, work / f"{base.name}-keep{keep}-m{multiple}", recover, target_macs=keep,
                                  channel_multiple=multiple, show_progress=False)
            runs[keep, multiple].append(r)
            print(f"{arch} {dataset} seed {seed} keep {keep} multiple {multiple}: {r['acc_before']:.4f} -> pruned "
                  f"{r['acc_pruned']:.4f} "
                  f"-> recovered {r['acc_recovered']:.4f} ({r['macs_after'] / r['macs_before']:.3f} of the MACs)",
                  flush=True)
    return {"arch": arch, "dataset": dataset, "runs": runs, "base": base_dirs[0]}


def latency(cases: list[dict], work: Path, threads: int, iters: int, warmup: int) -> dict[str, float]:
    """Export seed 0's unpruned and recovered runs (ONNX, INT8) and time all of them together, batch 1."""
    runners, shapes = {}, set()
    for case in cases:
        dirs = {"unpruned": case["base"], **{f"keep{k}-m{m}": Path(case["runs"][k, m][0]["out"]) for k, m in VARIANTS}}
        for name, run_dir in dirs.items():
            export_dir = work / f"{run_dir.name}-export"
            manifest = export_run(run_dir, export_dir, formats=("onnx",), int8=True, max_drop=None, progress=False)
            shapes.add(tuple(manifest["input"]["shape"][1:]))
            for key in manifest["artifacts"]:
                runners[f"{case['arch']}-{case['dataset']}/{name}/{key}"] = open_artifact(
                    export_dir, manifest, key, threads=threads).run
    if len(shapes) != 1:  # time_runners feeds every runner the same input
        raise SystemExit(f"the cases must share one input size, got {sorted(shapes)}")
    x = np.random.default_rng(0).standard_normal((1, *shapes.pop())).astype(np.float32)
    return time_runners(runners, x, iters, warmup)


def _mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {std:.4f}"


def render(cases: list[dict], lat: dict[str, float], args: argparse.Namespace, seconds: float,
           loads: tuple[str, str]) -> str:
    import onnxruntime

    lines = [
        "# Prune, then recover",
        "",
        f"Machine: {cpu_model()} ({platform.machine()}), torch {torch.__version__}, onnxruntime "
        f"{onnxruntime.__version__}; {seconds / 60:.0f} min in all. Load average before: {loads[0]}; "
        f"after: {loads[1]}.",
        "",
        f"Each unpruned model: `edgekd train` (CE, SGD, cosine lr 0.05, batch 64), {args.epochs} epochs, one per seed "
        "(seeds 0, 1, ... as many as the table's n). Pruned with `edgekd prune --target-macs F --channel-multiple M "
        f"--recover-epochs {args.recover_epochs}` (structured, L1 magnitude, torch-pruning's iterative steps, channel "
        "counts kept multiples of M: 16 is the default; where it cannot go lower it stops short of F and the MACs "
        "removed say so; recovery: KD from the unpruned model, "
        f"lr {args.recover_lr}). Accuracy: final top-1 on the held-out split, mean ± std over the seeds; "
        "Δ: recovered minus unpruned, paired per seed.",
        "",
        f"Latency: seed 0's models exported with `--int8 --max-drop none` (ONNX Runtime, static QDQ, the same plain "
        f"PTQ for every model: no FP32 fallback layers), batch 1, {args.threads} thread, "
        f"median of {args.iters} runs per model after warm-up, every model interleaved in rounds in one process.",
        "",
        f"Command: `{' '.join(['.venv/bin/python', 'benchmarks/prune.py', *sys.argv[1:]])}`",
        "",
        "| model | data | n | F | M | MACs removed | MACs (M) | unpruned | pruned | recovered | Δ (pts) | "
        "FP32 p50 (ms) | INT8 p50 (ms) | INT8 vs unpruned INT8 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    verdicts = []
    for case in cases:
        prefix = f"{case['arch']}-{case['dataset']}"
        base_fp32, base_int8 = lat[f"{prefix}/unpruned/onnx-fp32"], lat[f"{prefix}/unpruned/onnx-int8"]
        first = case["runs"][VARIANTS[0]]
        macs = first[0]["macs_before"] / 1e6
        lines.append(f"| {case['arch']} | {case['dataset']} | {len(first)} | | | 0 % | {macs:.1f} | "
                     f"{_mean_std([r['acc_before'] for r in first])} | | | | {base_fp32:.3f} | {base_int8:.3f} | "
                     "1.00x |")
        for keep, multiple in VARIANTS:
            rs = case["runs"][keep, multiple]
            removed = 1 - rs[0]["macs_after"] / rs[0]["macs_before"]
            deltas = [(r["acc_recovered"] - r["acc_before"]) * 100 for r in rs]
            name = f"{prefix}/keep{keep}-m{multiple}"
            fp32, int8 = lat[f"{name}/onnx-fp32"], lat[f"{name}/onnx-int8"]
            lines.append(
                f"| {case['arch']} | {case['dataset']} | {len(rs)} | {keep:g} | {multiple} | {removed:.0%} | "
                f"{rs[0]['macs_after'] / 1e6:.1f} | | "
                f"{_mean_std([r['acc_pruned'] for r in rs])} | {_mean_std([r['acc_recovered'] for r in rs])} | "
                f"{statistics.mean(deltas):+.2f} ± {statistics.stdev(deltas) if len(deltas) > 1 else 0:.2f} | "
                f"{fp32:.3f} | {int8:.3f} | {base_int8 / int8:.2f}x |")
            if (case["arch"], case["dataset"], keep, multiple) == ("resnet20", "digits", 0.5, 16):
                gap, speedup = -statistics.mean(deltas), base_int8 / int8
                verdicts = [
                    f"- recovered within {TARGETS['points_within']:g} point of unpruned: "
                    f"{abs(gap):.2f} points {'below' if gap >= 0 else 'above'} "
                    f"({'met' if gap <= TARGETS['points_within'] else 'NOT met'})",
                    f"- INT8 batch-1 p50 vs the unpruned INT8: {speedup:.2f}x (target >= {TARGETS['int8_speedup']}x: "
                    f"{'met' if speedup >= TARGETS['int8_speedup'] else 'NOT met'})",
                ]
    if verdicts:
        lines += ["", "The resnet20 on digits at 50 % of the MACs removed (F 0.5 at the default multiple, 16):", "",
                  *verdicts]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8, help="training epochs of each unpruned model")
    parser.add_argument("--train-threads", type=int, default=1,
                        help="torch threads for training (1: on a shared machine two spin-waiting threads run slower)")
    parser.add_argument("--recover-epochs", type=int, default=4)
    parser.add_argument("--recover-lr", type=float, default=PRUNE.lr, help="peak lr of the recovery runs")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for every runtime")
    parser.add_argument("--iters", type=int, default=800)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--cases", nargs="+", default=[f"{a}:{d}:{n}" for a, d, n in CASES], help="ARCH:DATASET:SEEDS")
    parser.add_argument("--out", type=Path, default=Path("/tmp/edgekd-prune-bench"), help="scratch dir (replaced)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    torch.set_num_threads(args.train_threads)
    started, load_before = time.perf_counter(), load()
    cases = []
    for case in args.cases:
        arch, dataset, seeds = case.split(":")
        cases.append(bench_case(args.out, arch, dataset, list(range(int(seeds))), args.epochs, args.recover_epochs,
                                args.recover_lr))
    lat = latency(cases, args.out, args.threads, args.iters, args.warmup)
    text = render(cases, lat, args, time.perf_counter() - started, (load_before, load()))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
