"""Distillation methods side by side on digits and synthetic, several seeds, one table with paired differences.

One fixed teacher->student pair per dataset; the teacher is trained once (seed 0) and shared by every
teacher-based method; tfkd-self and drkd(teacher=pretrained) distil from the same seed's `ce` student (their
"pre-trained copy of the student"). A row is a method with options, written ``name`` or
``name(key=value,...)`` (the options of ``--arg``). Reports mean ± std of the final held-out accuracy, seconds
per epoch, and each row's per-seed difference to ``ce`` and to ``kd`` (same seed, same data order: mean ± std of
the differences).

    uv run --all-extras python benchmarks/methods.py                       # writes benchmarks/results/methods.md
    uv run --all-extras python benchmarks/methods.py --rows 'ce,drkd(teacher=online)' --out /tmp/drkd.md
"""

from __future__ import annotations

import argparse
import platform
import re
import statistics
import tempfile
import time
from pathlib import Path

import torch

from edgekd.config import load_config
from edgekd.methods import method_class
from edgekd.train import run_training

ROWS = [
    "ce", "lsr", "kd", "dist", "dist(warmup=0)", "dkd", "drkd", "drkd(smoothing=0)", "drkd(target_T=8,smoothing=0)",
    "drkd(ce=complement)", "drkd(teacher=snapshot)", "drkd(teacher=ema)", "sld", "r2kd", "r2kd(preset=edgekd)",
    "tfkd-self", "tfkd-reg",
]
# Epochs where plain CE has converged on each set (resnet8, lr 0.05 cosine): digits is at 0.997 after 12; synthetic
# climbs from 0.59 at 12 to a plateau of about 0.92 from epoch 33 of 40, and a self-teacher is only worth judging there.
DATASETS = {
    "digits": {"data": "digits", "data_options": {}, "batch_size": 16, "epochs": 12},
    "synthetic": {"data": "synthetic", "data_options": {"count": 2000, "val_count": 500}, "batch_size": 32,
                  "epochs": 40},
}
TEACHER_LR = 0.05
ROW = re.compile(r"^([\w-]+)(?:\((.*)\))?$")


def parse_row(row: str) -> tuple[str, dict[str, str]]:
    """``drkd(teacher=online,alpha=0.5)`` -> ("drkd", {"teacher": "online", "alpha": "0.5"}), options checked."""
    m = ROW.match(row.strip())
    if not m:
        raise SystemExit(f"cannot read the row {row!r}; write name or name(key=value,...)")
    args = dict(kv.split("=", 1) for kv in m.group(2).split(",")) if m.group(2) else {}
    method_class(m.group(1)).check_args(args)
    return m.group(1), args


def split_rows(text: str) -> list[str]:
    """Rows separated by commas outside parentheses."""
    rows, depth, cur = [], 0, ""
    for ch in text:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            rows.append(cur)
            cur = ""
        else:
            cur += ch
    return [r.strip() for r in [*rows, cur] if r.strip()]


def _run(work: Path, name: str, **overrides) -> dict:
    cfg = load_config(overrides={"out": str(work / name), **overrides})
    return run_training(cfg, show_progress=False)


def bench_dataset(work: Path, dataset: str, rows: list[str], args: argparse.Namespace) -> dict:
    base = {**DATASETS[dataset], "epochs": args.epochs or DATASETS[dataset]["epochs"]}
    parsed = {row: parse_row(row) for row in rows}
    needs_teacher = any(method_class(m).needs_teacher and not method_class(m).wants_self_teacher(a)
                        for m, a in parsed.values())
    t = _run(work, f"{dataset}-teacher", **base, lr=TEACHER_LR, model=args.teacher, seed=0) if needs_teacher else None
    base["lr"] = args.lr
    results: dict[str, list[dict]] = {row: [] for row in rows}
    ce_runs: dict[int, dict] = {}
    for seed in args.seeds:
        for i, row in enumerate(rows):
            method, method_args = parsed[row]
            cfg = {**base, "model": args.student, "seed": seed, "method": method, "method_args": method_args}
            if method_class(method).wants_self_teacher(method_args):
                if seed not in ce_runs:
                    name = f"{dataset}-ce-for-self-teacher-s{seed}"
                    ce_runs[seed] = _run(work, name, **base, model=args.student, seed=seed)
                cfg["teacher"] = ce_runs[seed]["out"]
            elif method_class(method).needs_teacher:
                cfg["teacher"] = t["out"]
            if method == "dkd" and "warmup" not in method_args:
                # the paper's 20 of 240 epochs
                cfg["method_args"] = {**method_args, "warmup": max(1, base["epochs"] // 4)}
            s = _run(work, f"{dataset}-{i}-s{seed}", **cfg)
            if method == "ce" and not method_args:
                ce_runs.setdefault(seed, s)
            results[row].append(s)
            per_epoch = s["seconds"] / base["epochs"]
            print(f"{dataset:9s} {row:28s} seed {seed}: {s['final_acc']:.4f}  {per_epoch:.2f} s/epoch",
                  flush=True)
    return {"teacher": t, "results": results, "epochs": base["epochs"]}


def _mean_std(values: list[float]) -> str:
    mean, std = statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)
    return f"{mean:+.4f} ± {std:.4f}" if min(values) < 0 else f"{mean:.4f} ± {std:.4f}"


def _paired(runs: list[dict], base: list[dict] | None) -> str:
    if not base:
        return "–"
    diffs = [(a["final_acc"] - b["final_acc"]) * 100 for a, b in zip(runs, base)]
    mean, std = statistics.mean(diffs), (statistics.stdev(diffs) if len(diffs) > 1 else 0.0)
    wins = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    return f"{mean:+.2f} ± {std:.2f} ({wins[0]}/{wins[1]})"


def render(tables: dict, rows: list[str], args: argparse.Namespace, seconds: float) -> str:
    lines = [
        "# Methods: held-out top-1 accuracy, mean ± std over seeds",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), CPU; "
        f"torch {torch.__version__}. Seeds {args.seeds}; "
        + ", ".join(f"{d} {t['epochs']} epochs" for d, t in tables.items())
        + "; batch 16 (digits) / 32 (synthetic); "
        + f"SGD cosine, lr {args.lr:g} (teacher {TEACHER_LR:g}); "
        + f"teacher {args.teacher} (seed 0), student {args.student}. "
        + f"Wall time {seconds / 60:.1f} min. "
        + f"Synthetic: {DATASETS['synthetic']['data_options']}.",
        "",
        "Δ columns: the per-seed difference to `ce` / `kd` of the same seed, in points, mean ± std "
        "(seeds ahead / behind).",
        "",
    ]
    for d, table in tables.items():
        res = table["results"]
        ce, kd = res.get("ce"), res.get("kd")
        epochs = table["epochs"]
        lines += [f"## {d} ({epochs} epochs)", "", "| method | top-1 | Δ vs ce (pts) | Δ vs kd (pts) | s/epoch |",
                  "|---|---:|---:|---:|---:|"]
        if table["teacher"]:
            t = table["teacher"]
            lines.append(f"| teacher {args.teacher} (ce, seed 0) | {t['final_acc']:.4f} | – | – | "
                         f"{t['seconds'] / epochs:.2f} |")
        for row in rows:
            runs = res[row]
            per_epoch = statistics.mean(r["seconds"] for r in runs) / epochs
            lines.append(
                f"| {row} | {_mean_std([r['final_acc'] for r in runs])} | {_paired(runs, ce if row != 'ce' else None)} "
                f"| {_paired(runs, kd if row != 'kd' else None)} | {per_epoch:.2f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="digits,synthetic")
    p.add_argument("--rows", default=",".join(ROWS), help="methods with options, e.g. 'ce,drkd(teacher=online)'")
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2, 3, 4])
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs on every dataset (default: where ce has converged, digits 12, synthetic 40)")
    p.add_argument("--lr", type=float, default=0.05, help="SGD learning rate of the students")
    p.add_argument("--teacher", default="resnet20")
    p.add_argument("--student", default="resnet8")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steady timings on a shared machine)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "methods.md")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = split_rows(args.rows)
    for row in rows:
        parse_row(row)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgekd-methods-") as tmp:
        tables = {d: bench_dataset(Path(tmp), d, rows, args) for d in args.datasets.split(",")}
    text = render(tables, rows, args, time.perf_counter() - start)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
