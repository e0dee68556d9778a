"""Why DIST can fail to start: its loss's gradient on a freshly initialised student, next to CE's and KD's.

A Pearson correlation's gradient scales with 1 / the spread of its input, and a fresh classifier head softened at
τ = 4 has almost none, so the DIST term starts with a gradient far above CE's; ``dist --arg warmup=N`` ramps it in.
One training batch per set, the student resnet8 and the teacher resnet20 both at initialisation (the student's
spread is the factor that matters), each term at its full weight: DIST as the release applies it from the first
step, before the default's ramp (``warmup``) scales it down.

    uv run --all-extras python benchmarks/dist_init_grad.py     # writes benchmarks/results/dist-init-grad.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from edgekd.data import build_data
from edgekd.losses import dist_loss, kd_loss
from edgekd.methods import method_class
from edgekd.models import create_model

SETS = {"digits": ({}, 16), "synthetic": ({"count": 2000, "val_count": 500}, 32)}


def grad_norm(model: torch.nn.Module, loss: torch.Tensor) -> float:
    model.zero_grad()
    loss.backward(retain_graph=True)
    return torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "dist-init-grad.md")
    args = p.parse_args()
    torch.set_num_threads(1)
    dist, kd = method_class("dist").defaults, method_class("kd").defaults
    lines = ["# DIST at initialisation: gradient norms of each loss term on one batch", "",
             f"`benchmarks/dist_init_grad.py`; student resnet8, teacher resnet20, both untrained; DIST's term at full "
             f"weight, as the release applies it from the first step (kd_weight {dist['kd_weight']:g}, "
             f"τ {dist['tau']:g}; the default ramp, warmup {dist['warmup']}, scales it by 1/{dist['warmup']} in the "
             f"first epoch), KD at alpha {kd['alpha']:g}, T {kd['T']:g}. "
             "spread: the mean per-image std of the student's softmax at τ.", "",
             "| data | seed | spread | ‖∇ CE‖ | ‖∇ KD‖ | ‖∇ DIST‖ | DIST / CE |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, (options, batch) in SETS.items():
        data = build_data(name, options=options)
        train = data.train_set()
        torch.manual_seed(0)  # the training transform crops at random: the same batch on every run
        x = torch.stack([train[i][0] for i in range(batch)])
        y = torch.tensor([train[i][1] for i in range(batch)])
        for seed in args.seeds:
            torch.manual_seed(seed)
            student = create_model("resnet8", data.num_classes).train()
            teacher = create_model("resnet20", data.num_classes).eval()
            z = student(x)
            with torch.no_grad():
                z_t = teacher(x)
            spread = F.softmax(z / dist["tau"], 1).std(1).mean().item()
            ce = grad_norm(student, F.cross_entropy(z, y))
            kd_g = grad_norm(student, kd["alpha"] * kd_loss(z, z_t, kd["T"]))
            dist_g = grad_norm(student, dist["kd_weight"] * dist_loss(z, z_t, dist["tau"], dist["beta"], dist["gamma"]))
            ratio = dist_g / ce
            lines.append(f"| {name} | {seed} | {spread:.4f} | {ce:.2f} | {kd_g:.2f} | {dist_g:.1f} | {ratio:.0f}x |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
