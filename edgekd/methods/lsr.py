"""Label smoothing regularisation (Szegedy et al. 2016): cross-entropy against (1 - ε)·one-hot + ε/C."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgekd.methods.base import FRACTION, Method, register_method


@register_method("lsr")
class LabelSmoothing(Method):
    defaults = {"smoothing": 0.1}
    rules = {"smoothing": FRACTION}

    def forward_train(self, x: torch.Tensor, y: torch.Tensor, epoch: int):
        logits = self.student(x)
        return logits, {"ce": F.cross_entropy(logits, y, label_smoothing=self.args["smoothing"])}
