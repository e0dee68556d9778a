"""`edgekd prune --recover-epochs`: which recovery learning rate and length bring a cut model back, over seeds.

Per seed: a CE run (`edgekd train`'s trainer), then for each recovery setting (lr, epochs) the product's own path,
`edgekd prune RUN --ratio R --recover-epochs E --lr LR` (KD from the unpruned model). Reported: the recovered
held-out top-1 against the unpruned model's, paired per seed, and each setting against the first one.

    .venv/bin/python benchmarks/prune_recovery.py --seeds 0 1 2 --out benchmarks/results/prune-recovery.md
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from edgekd.config import load_config
from edgekd.recover import prune
from edgekd.train import run_training
from timing import cpu_model, load


def _setting(text: str) -> tuple[float, int]:
    lr, epochs = text.split(":")
    if int(epochs) < 1:
        raise argparse.ArgumentTypeError(f"a recovery needs at least one epoch: {text}")
    return float(lr), int(epochs)


def _mean(values: list[float], scale: float = 1.0, sign: bool = False) -> str:
    mean = statistics.mean(values) * scale
    std = (statistics.stdev(values) if len(values) > 1 else 0.0) * scale
    return f"{mean:+.2f} ± {std:.2f}" if sign else f"{mean:.4f} ± {std:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--data", default="digits")
    parser.add_argument("--epochs", type=int, default=6, help="training epochs of each unpruned model")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--settings", nargs="+", type=_setting, default=[(0.01, 4), (0.02, 4), (0.04, 4)],
                        help="LR:EPOCHS recovery settings; the first is the one the others are compared with")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    loads, start = [load()], time.time()
    unpruned: list[float] = []
    recovered: dict[tuple[float, int], list[float]] = {s: [] for s in args.settings}
    with tempfile.TemporaryDirectory(prefix="edgekd-prune-recovery-") as tmp:
        for seed in args.seeds:
            base = Path(tmp) / f"base-s{seed}"
            summary = run_training(load_config(overrides={"data": args.data, "model": args.model, "seed": seed,
                                                          "epochs": args.epochs, "out": str(base)}),
                                   show_progress=False)
            unpruned.append(summary["final_acc"])
            for lr, epochs in args.settings:
                out = Path(tmp) / f"pruned-s{seed}-{lr}-{epochs}"
                result = prune(base, out, ratio=args.ratio, recover_epochs=epochs, lr=lr, seed=seed,
                               show_progress=False)
                recovered[(lr, epochs)].append(result["acc_recovered"])
                print(f"seed {seed}: unpruned {unpruned[-1]:.4f}, lr {lr} x {epochs} epochs: "
                      f"{result['acc_recovered']:.4f}", flush=True)
                shutil.rmtree(out)
    loads.append(load())
    first = recovered[args.settings[0]]
    lines = [
        "# Prune recovery: learning rate and length",
        "",
        f"Machine: {cpu_model()} ({platform.machine()}), torch {torch.__version__}; "
        f"{(time.time() - start) / 60:.0f} min in all. Load average before: {loads[0]}; after: {loads[1]}.",
        "",
        f"Model: {args.model} on {args.data}, `edgekd train` {args.epochs} epochs per seed (seeds "
        f"{', '.join(map(str, args.seeds))}), then `edgekd prune RUN --ratio {args.ratio:g} --recover-epochs E "
        "--lr LR` (KD from the unpruned model, the other recovery settings at their defaults). Accuracy: final "
        "held-out top-1; differences in points, paired per seed.",
        "",
        f"Command: `{' '.join(['.venv/bin/python', 'benchmarks/prune_recovery.py', *sys.argv[1:]])}`",
        "",
        f"Unpruned: {_mean(unpruned)}",
        "",
        f"| lr | epochs | recovered | vs unpruned (pts) | vs lr {args.settings[0][0]:g} x {args.settings[0][1]} "
        "(pts) | per seed |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for (lr, epochs), accs in recovered.items():
        lines.append(
            f"| {lr:g} | {epochs} | {_mean(accs)} | {_mean([a - u for a, u in zip(accs, unpruned)], 100, True)} | "
            f"{_mean([a - f for a, f in zip(accs, first)], 100, True)} | {', '.join(f'{a:.4f}' for a in accs)} |")
    args.out.write_text("\n".join(lines) + "\n")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
