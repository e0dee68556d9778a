"""Every distillation method on digits and synthetic, several seeds, one table.

One fixed teacher->student pair per dataset; the teacher is trained once (seed 0) and shared by every
teacher-based method; tfkd-self distils from the same seed's `ce` student (its "pre-trained copy of the
student"). Reports mean ± std of the final held-out accuracy and seconds per epoch, and says plainly
whether DR-KD beats `ce` and R2KD beats `kd`.

    uv run --all-extras python benchmarks/methods.py            # writes benchmarks/results/methods.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from edgekd.config import load_config
from edgekd.train import run_training

METHODS = ["ce", "lsr", "kd", "tfkd-self", "tfkd-reg", "dist", "dkd", "drkd", "r2kd"]
DATASETS = {
    "digits": {"data": "digits", "data_options": {}, "batch_size": 16},
    "synthetic": {"data": "synthetic", "data_options": {"count": 2000, "val_count": 500}, "batch_size": 32},
}


def _run(work: Path, name: str, **overrides) -> dict:
    cfg = load_config(overrides={"lr": 0.05, "out": str(work / name), **overrides})
    return run_training(cfg, show_progress=False)


def bench_dataset(work: Path, dataset: str, teacher: str, student: str, epochs: int, seeds: list[int]) -> dict:
    base = DATASETS[dataset]
    t = _run(work, f"{dataset}-teacher", **base, model=teacher, epochs=epochs, seed=0)
    results: dict[str, list[dict]] = {m: [] for m in METHODS}
    for seed in seeds:
        for method in METHODS:
            cfg = {**base, "model": student, "epochs": epochs, "seed": seed, "method": method}
            if method in ("kd", "dist", "dkd", "r2kd"):
                cfg["teacher"] = t["out"]
            if method == "tfkd-self":
                cfg["teacher"] = results["ce"][-1]["out"]
            if method == "dkd":
                cfg["method_args"] = {"warmup": max(1, epochs // 4)}  # the paper's 20-epoch warm-up is for 240 epochs
            s = _run(work, f"{dataset}-{method}-s{seed}", **cfg)
            results[method].append(s)
            print(f"{dataset:9s} {method:9s} seed {seed}: {s['final_acc']:.4f}  {s['seconds'] / epochs:.2f} s/epoch", flush=True)
    return {"teacher": t, "results": results}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def render(tables: dict, args: argparse.Namespace, seconds: float) -> str:
    lines = [
        "# Methods: held-out top-1 accuracy, mean ± std over seeds",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, CPU; "
        f"torch {torch.__version__}. Seeds {args.seeds}; {args.epochs} epochs; batch 16 (digits) / 32 (synthetic); SGD lr 0.05 cosine; "
        f"teacher {args.teacher} (seed 0), student {args.student}. Wall time {seconds / 60:.1f} min. "
        f"Synthetic: {DATASETS['synthetic']['data_options']}.",
        "",
        "| method | " + " | ".join(f"{d} acc | {d} s/epoch" for d in tables) + " |",
        "|---|" + "---:|---:|" * len(tables),
    ]
    teacher_row = "| teacher (ce) | " + " | ".join(
        f"{tables[d]['teacher']['final_acc']:.4f} | {tables[d]['teacher']['seconds'] / args.epochs:.2f}" for d in tables
    ) + " |"
    lines.append(teacher_row)
    for m in METHODS:
        cells = []
        for d in tables:
            runs = tables[d]["results"][m]
            mean, std = _mean_std([r["final_acc"] for r in runs])
            cells.append(f"{mean:.4f} ± {std:.4f} | {statistics.mean(r['seconds'] for r in runs) / args.epochs:.2f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "## What the seeds say", ""]
    for d in tables:
        acc = {m: _mean_std([r["final_acc"] for r in tables[d]["results"][m]]) for m in METHODS}
        for a, b in (("drkd", "ce"), ("r2kd", "kd")):
            (ma, sa), (mb, sb) = acc[a], acc[b]
            if ma - sa > mb + sb:
                verdict = "beats"
            elif ma > mb:
                verdict = "is ahead of, but within one std of,"
            else:
                verdict = "does NOT beat"
            lines.append(f"- {d}: {a} ({ma:.4f} ± {sa:.4f}) {verdict} {b} ({mb:.4f} ± {sb:.4f}).")
    lines += [
        "",
        "Short CPU runs on small data: differences of a few tenths of a point are within seed noise; the papers' "
        "claims are for 240-epoch CIFAR-100 / Tiny-ImageNet runs (recipes in `configs/`).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="digits,synthetic")
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--teacher", default="resnet20")
    p.add_argument("--student", default="resnet8")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "methods.md")
    args = p.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgekd-methods-") as tmp:
        tables = {
            d: bench_dataset(Path(tmp), d, args.teacher, args.student, args.epochs, args.seeds)
            for d in args.datasets.split(",")
        }
    text = render(tables, args, time.perf_counter() - start)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
