"""Decoupled KD (Zhao et al. 2022), with mdistiller's linear warm-up of the distillation term."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgekd.losses import dkd_loss
from edgekd.methods.base import NON_NEGATIVE, POSITIVE, Method, linear_warmup, register_method


@register_method("dkd")
class DKD(Method):
    needs_teacher = True
    uses_teacher = True
    softens_logits = True
    defaults = {"alpha": 1.0, "beta": 8.0, "T": 4.0, "ce_weight": 1.0, "warmup": 20}
    rules = {"alpha": NON_NEGATIVE, "beta": NON_NEGATIVE, "T": POSITIVE, "ce_weight": NON_NEGATIVE,
             "warmup": NON_NEGATIVE}

    def warmup_factor(self, epoch: int) -> float:
        return linear_warmup(epoch, self.args["warmup"])

    def forward_train(self, x: torch.Tensor, y: torch.Tensor, epoch: int):
        a = self.args
        logits = self.student(x)
        z_t = self.teacher_logits(x, y)
        kd = dkd_loss(self.soft(logits), self.soft(z_t), y, a["alpha"], a["beta"], a["T"])
        return logits, {"ce": a["ce_weight"] * F.cross_entropy(logits, y), "kd": self.warmup_factor(epoch) * kd}
