"""Hinton et al. 2015 knowledge distillation: (1 - a)·CE + a·T²·KL(p_t ‖ p_s)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgekd.losses import kd_loss
from edgekd.methods.base import FRACTION, POSITIVE, Method, register_method


@register_method("kd")
class KD(Method):
    needs_teacher = True
    uses_teacher = True
    softens_logits = True
    defaults = {"alpha": 0.9, "T": 4.0}
    rules = {"alpha": FRACTION, "T": POSITIVE}

    def forward_train(self, x: torch.Tensor, y: torch.Tensor, epoch: int):
        a, T = self.args["alpha"], self.args["T"]
        logits = self.student(x)
        z_t = self.teacher_logits(x, y)
        kd = kd_loss(self.soft(logits), self.soft(z_t), T)
        return logits, {"ce": (1 - a) * F.cross_entropy(logits, y), "kd": a * kd}
