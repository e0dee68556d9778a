"""Plain cross-entropy: the baseline, and what ``edgekd train`` runs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgekd.methods.base import Method, register_method


@register_method("ce")
class CrossEntropy(Method):
    defaults = {}

    def forward_train(self, x: torch.Tensor, y: torch.Tensor, epoch: int):
        logits = self.student(x)
        return logits, {"ce": F.cross_entropy(logits, y)}
