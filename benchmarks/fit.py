"""`edgekd fit` against `edgekd prune --target-macs` at the same measured latency, over seeds.

Per seed: a CE run (`edgekd train`'s trainer), its unpruned INT8 export timed as `edgekd bench` times it, then for
each budget (a fraction of that latency) `edgekd fit` (the product's path: search, KD recovery, INT8 export with
the default accuracy bound). The comparison: the uniform MACs-target prune whose plain-PTQ INT8 latency is closest
to the fitted model's without exceeding it (target MACs searched on a grid, each candidate measured), recovered
with the same KD epochs and exported the same way. The two final artifacts and the unpruned one are then timed
together in interleaved rounds; an independent `run_bench` of the fitted export checks it against the budget.

    .venv/bin/python benchmarks/fit.py            # writes benchmarks/results/fit.md
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgekd.config import load_config
from edgekd.errors import EdgeKDError
from edgekd.export import export_run
from edgekd.export.bench import run_bench
from edgekd.fit import fit
from edgekd.latency import Target
from edgekd.recover import prune_and_recover
from edgekd.runtimes import open_artifact
from edgekd.settings import EXPORT, FIT
from edgekd.train import run_training
from timing import cpu_model, load, time_runners

RESULTS = Path(__file__).parent / "results" / "fit.md"
GRID = [round(0.95 - 0.05 * i, 2) for i in range(16)]  # target MACs fractions 0.95 ... 0.2


def _int8_p50(target: Target, run_dir: Path, work: Path, max_drop: float | None,
              readings: int = 1) -> tuple[float, dict, Path]:
    """The run's INT8 export and its p50: the median of ``readings`` measurements (a budget is set from it, and one
    reading on this machine has come out 1.7x another minutes apart)."""
    export = work / f"{run_dir.name}-export"
    shutil.rmtree(export, ignore_errors=True)
    manifest = export_run(run_dir, export, formats=("onnx",), int8=True, max_drop=max_drop, progress=False)
    return statistics.median(target.measure(export)["p50_ms"] for _ in range(readings)), manifest, export


def _macs_match(base: Path, base_export: Path, work: Path, target: Target, ratio: float) -> float:
    """The largest MACs fraction on GRID whose pruned (unrecovered, plain PTQ) INT8 model, timed beside the
    unpruned export as fit times its candidates, is no slower relative to it than the fitted model (``ratio``)."""
    from edgekd.prune import prune_run

    chosen = GRID[-1]
    for fraction in GRID:
        out = work / f"{base.name}-macs{fraction}"
        shutil.rmtree(out, ignore_errors=True)
        prune_run(base, out, target_macs=fraction)
        export = work / f"{out.name}-export"
        shutil.rmtree(export, ignore_errors=True)
        export_run(out, export, formats=("onnx",), int8=True, max_drop=None, progress=False)
        measured = target.measure(export, base_export)["ratio"]
        print(f"  target MACs {fraction}: {measured:.3f}x the unpruned model", flush=True)
        if measured <= ratio:
            return fraction
    return chosen


def run_seed(args: argparse.Namespace, work: Path, seed: int) -> list[dict]:
    base = work / f"{args.model}-{args.data}-s{seed}"
    run_training(load_config(overrides={"data": args.data, "model": args.model, "epochs": args.epochs, "seed": seed,
                                        "out": str(base)}), show_progress=False)
    target = Target("ort", "int8", 1, None, "p50", FIT.seconds)
    base_p50, base_manifest, base_export = _int8_p50(target, base, work, EXPORT.max_drop, readings=5)
    print(f"seed {seed}: unpruned INT8 p50 {base_p50:.3f} ms", flush=True)
    rows = []
    for factor in args.budgets:
        budget = factor * base_p50
        start = time.time()
        try:
            record = fit(base, work / f"{base.name}-fit{factor}", budget, recover_epochs=args.recover_epochs,
                         seed=seed, finetune_steps=args.finetune_steps, cache_dir=work / "cache", log=print)
        except EdgeKDError as e:  # a fit that ends in an error is a result too
            rows.append({"seed": seed, "factor": factor, "budget": budget, "base_p50": base_p50,
                         "wall": time.time() - start, "failed": str(e)})
            print(rows[-1], flush=True)
            continue
        wall = time.time() - start
        if not record["steps"]:  # the unpruned model met the budget when fit measured it: nothing to compare
            rows.append({"seed": seed, "factor": factor, "budget": budget, "base_p50": base_p50, "wall": wall,
                         "failed": f"fit measured the unpruned model at {record['baseline']['latency_ms']:.3f} ms, "
                                   "within the budget, and exported it as it is"})
            print(rows[-1], flush=True)
            continue
        fit_export = Path(record["final"]["export"])
        fraction = _macs_match(base, base_export, work, target, record["final"]["ratio"])
        macs_run = work / f"{base.name}-macs{fraction}-recovered"
        shutil.rmtree(macs_run, ignore_errors=True)
        prune_and_recover(base, macs_run, {"epochs": args.recover_epochs, "lr": FIT.lr, "seed": seed},
                          target_macs=fraction, show_progress=False)
        _, macs_manifest, macs_export = _int8_p50(target, macs_run, work, EXPORT.max_drop)
        fit_manifest = json.loads((fit_export / "manifest.json").read_text())
        exports = {"unpruned": (base_export, base_manifest), "fit": (fit_export, fit_manifest),
                   "macs": (macs_export, macs_manifest)}
        runners = {name: open_artifact(path, manifest, "onnx-int8").run for name, (path, manifest) in exports.items()}
        x = np.random.default_rng(0).standard_normal((1, *base_manifest["input"]["shape"][1:])).astype(np.float32)
        timed = time_runners(runners, x, args.iters, warmup=20)
        [independent] = [r for r in run_bench(fit_export, runtimes=["ort"], precisions=["int8"], batches=[1],
                                              progress=False)]
        rows.append({
            "seed": seed, "factor": factor, "budget": budget, "base_p50": base_p50, "wall": wall,
            "steps": len(record["steps"]), "fraction": fraction,
            "acc": {name: manifest["artifacts"]["onnx-int8"]["accuracy"] for name, (_, manifest) in exports.items()},
            "macs": {"fit": record["steps"][-1]["chosen"]["macs"] if record["steps"] else None},
            "timed": timed, "independent_p50": independent["p50_ms"], "fit_final": record["final"]["latency_ms"],
            "qat_epochs": record["final"]["qat_epochs"], "fit_ratio": record["final"]["ratio"],
        })
        print(rows[-1], flush=True)
    return rows


def _ms(values: list[float]) -> str:
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values) if len(values) > 1 else 0:.4f}"


def _pts(values: list[float]) -> str:
    return f"{statistics.mean(values):+.2f} ± {statistics.stdev(values) if len(values) > 1 else 0:.2f}"


def render(args: argparse.Namespace, rows: list[dict], seconds: float, loads: tuple[str, str]) -> str:
    import onnxruntime

    lines = [
        "# `edgekd fit` against a MACs target at the same measured latency",
        "",
        f"Machine: {cpu_model()} ({platform.machine()}), torch {torch.__version__}, onnxruntime "
        f"{onnxruntime.__version__}; {seconds / 60:.0f} min in all. Load average before: {loads[0]}; after: "
        f"{loads[1]}.",
        "",
        f"Model: {args.model} on {args.data}, `edgekd train` {args.epochs} epochs per seed (seeds "
        f"{', '.join(map(str, range(args.seeds)))}). Budget: a fraction of the unpruned model's ONNX Runtime INT8 "
        f"batch-1 p50 on this machine. Fit: `edgekd fit --budget-ms B --recover-epochs {args.recover_epochs} "
        f"--finetune-steps {args.finetune_steps}` (defaults otherwise). MACs target: the largest fraction on a 0.05 "
        "grid whose pruned, unrecovered plain-PTQ INT8 model, timed beside the unpruned export as fit times its "
        "candidates, is no slower relative to it than the fitted model, then "
        f"`prune --target-macs F --recover-epochs {args.recover_epochs}` (KD, the same lr). Both exported with the "
        "default INT8 accuracy bound; accuracy: the INT8 artifact's held-out top-1 from its manifest. Latency "
        f"(ms): the three INT8 artifacts timed together at batch 1, median of {args.iters} calls in interleaved "
        "rounds. 'bench fit p50' is an independent `run_bench` of the fitted export afterwards, and 'within budget' "
        "compares it with the budget in ms (5 % tolerance); 'fit / unpruned' is the ratio of the two timed together, "
        "which the budget's fraction bounds whatever the machine's speed did meanwhile ('within as ratio', 5 %).",
        "",
        f"Command: `{' '.join(['.venv/bin/python', 'benchmarks/fit.py', *sys.argv[1:]])}`",
        "",
        "| budget | seed | budget (ms) | steps | fit wall (s) | MACs F | unpruned acc | fit acc | MACs acc | "
        "fit − MACs (pts) | unpruned ms | fit ms | MACs ms | bench fit p50 | within budget | fit / unpruned | "
        "within as ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['factor']:g}x | {r['seed']} | {r['budget']:.3f} | failed after {r['wall']:.0f} s: "
                         f"{r['failed'][:300]} |" + " |" * 13)
            continue
        t, a = r["timed"], r["acc"]
        lines.append(
            f"| {r['factor']:g}x | {r['seed']} | {r['budget']:.3f} | {r['steps']} | {r['wall']:.0f} | "
            f"{r['fraction']:g} | {a['unpruned']:.4f} | {a['fit']:.4f}{' (QAT)' if r['qat_epochs'] else ''} | "
            f"{a['macs']:.4f} | "
            f"{(a['fit'] - a['macs']) * 100:+.2f} | {t['unpruned']:.3f} | {t['fit']:.3f} | {t['macs']:.3f} | "
            f"{r['independent_p50']:.3f} | {'yes' if r['independent_p50'] <= r['budget'] * 1.05 else 'NO'} | "
            f"{t['fit'] / t['unpruned']:.3f} | {'yes' if t['fit'] / t['unpruned'] <= r['factor'] * 1.05 else 'NO'} |")
    lines += ["", "| budget | n | fit acc | MACs acc | paired fit − MACs (pts) | fit ms / MACs ms | "
              "fit vs unpruned acc (pts) |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for factor in args.budgets:
        rs = [r for r in rows if r["factor"] == factor and "failed" not in r]
        if not rs:
            continue
        diff = [(r["acc"]["fit"] - r["acc"]["macs"]) * 100 for r in rs]
        drop = [(r["acc"]["fit"] - r["acc"]["unpruned"]) * 100 for r in rs]
        ratio = [r["timed"]["fit"] / r["timed"]["macs"] for r in rs]
        lines.append(f"| {factor:g}x | {len(rs)} | {_ms([r['acc']['fit'] for r in rs])} | "
                     f"{_ms([r['acc']['macs'] for r in rs])} | {_pts(diff)} | "
                     f"{statistics.mean(ratio):.2f} | {statistics.mean(drop):+.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet8x4")
    parser.add_argument("--data", default="digits")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.7])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--recover-epochs", type=int, default=3)
    parser.add_argument("--finetune-steps", type=int, default=FIT.finetune_steps)
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    loads = [load()]
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="edgekd-fit-bench-") as tmp:
        rows = [row for seed in range(args.seeds) for row in run_seed(args, Path(tmp), seed)]
    loads.append(load())
    args.out.write_text(render(args, rows, time.time() - start, tuple(loads)))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
