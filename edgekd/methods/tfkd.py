"""Teacher-free KD (Yuan et al. 2020, "Revisiting Knowledge Distillation via Label Smoothing Regularization").

``tfkd-self`` distils from a CE-trained copy of the student; ``tfkd-reg`` from a hand-made teacher that puts
0.99 on the true class. Both follow the authors' release (yuanli2333/Teacher-free-Knowledge-Distillation,
``my_loss_function.py``): its ``nn.KLDivLoss()`` averages over batch *and* classes, so the KL terms here are the
batch-averaged KL divided by the number of classes, which keeps the release's tuned ``multiplier`` values
meaningful. Defaults are the release's MobileNetV2 CIFAR-100 settings (the small-student case edgekd targets).

They are settings for the release's 200-epoch runs, not for short ones: alpha 0.95 leaves cross-entropy 5 % of
the weight, and the KD targets are softened at T = 20 (tfkd-reg's at reg_T = 40, which leaves the hand-made
teacher nearly uniform: 0.102 on the true class with 10 classes, so the part of tfkd-reg's gradient that
separates the classes is about a twentieth of plain CE's). A run of CE's length then ends far below CE
(``benchmarks/results/methods.md``): give these methods the release's length.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.errors import EdgeKDError
from edgekd.losses import kd_loss
from edgekd.methods.base import FRACTION, NON_NEGATIVE, POSITIVE, Method, register_method


def check_self_teacher(method: str, student: nn.Module, teacher: nn.Module) -> None:
    """A self-teacher must be the student's architecture: same class and the same parameter shapes."""
    s = {k: tuple(v.shape) for k, v in student.state_dict().items()}
    t = {k: tuple(v.shape) for k, v in teacher.state_dict().items()}
    if type(student) is not type(teacher) or s != t:
        raise EdgeKDError(
            f"method {method!r} distils from a CE-trained copy of the student, but the teacher is a "
            f"{type(teacher).__name__} with other layers than the student {type(student).__name__}; "
            "pass a run dir of the student's own architecture (or none, to have it trained first)"
        )


@register_method("tfkd-self")
class TfKDSelf(Method):
    needs_teacher = True
    uses_teacher = True
    softens_logits = True
    defaults = {"alpha": 0.95, "T": 20.0, "multiplier": 1.0}
    rules = {"alpha": FRACTION, "T": POSITIVE, "multiplier": NON_NEGATIVE}

    @classmethod
    def wants_self_teacher(cls, args: dict[str, Any]) -> bool:
        return True

    def __init__(self, student, teacher, args, **options) -> None:
        super().__init__(student, teacher, args, **options)
        check_self_teacher(self.name, student, teacher)

    def forward_train(self, x: torch.Tensor, y: torch.Tensor, epoch: int):
        a = self.args
        logits = self.student(x)
        z_t = self.teacher_logits(x, y)
        kd = kd_loss(self.soft(logits), self.soft(z_t), a["T"]) / logits.shape[1]
        return logits, {
            "ce": (1 - a["alpha"]) * F.cross_entropy(logits, y),
            "kd": a["alpha"] * a["multiplier"] * kd,
        }


@register_method("tfkd-reg")
class TfKDReg(Method):
    """The hand-made teacher u(k) = 0.99 on the true class, 0.01/(C-1) elsewhere, softened as the release does:
    softmax(u / reg_T) (u taken as logits), against the student's unsoftened log-softmax, with no T² factor."""

    defaults = {"reg_alpha": 0.95, "reg_T": 40.0, "multiplier": 1.0, "correct_prob": 0.99}
    rules = {"reg_alpha": FRACTION, "reg_T": POSITIVE, "multiplier": NON_NEGATIVE,
             "correct_prob": (lambda v: 0 < v <= 1, "in (0, 1]")}

    def forward_train(self, x: torch.Tensor, y: torch.Tensor, epoch: int):
        a = self.args
        logits = self.student(x)
        c = logits.shape[1]
        u = torch.full_like(logits, (1 - a["correct_prob"]) / (c - 1))
        u[torch.arange(len(y), device=y.device), y] = a["correct_prob"]
        target = F.softmax(u / a["reg_T"], dim=1)
        kl = F.kl_div(F.log_softmax(logits, dim=1), target, reduction="batchmean") / c
        return logits, {
            "ce": (1 - a["reg_alpha"]) * F.cross_entropy(logits, y),
            "kd": a["reg_alpha"] * a["multiplier"] * kl,
        }
