"""Transformed teacher matching (Zheng & Yang, ICLR 2024, "Knowledge Distillation Based on Transformed Teacher
Matching"): KD with the temperature on the teacher's side only, CE + β·KL(softmax(z_t/T) ‖ softmax(z_s)); ``wttm``
weights each sample's term by how smooth the teacher's transformed distribution is (``edgekd.losses.ttm_loss``).

The loss and its combination with cross-entropy (weight 1, β on the matching term) follow the authors' release
(zkxufo/TTM, ``distiller_zoo/ttm.py``, ``wttm.py``, ``helper/loops.py``). The defaults are the release README's
examples for vgg13 → vgg8 on CIFAR-100 (TTM: γ = 0.1, β = 45; WTTM: γ = 0.2 with weight 4, there beside CRD),
written as T = 1/γ; the paper tunes T and β per pair, so they are a starting point, not a tuned setting.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgekd.losses import ttm_loss
from edgekd.methods.base import NON_NEGATIVE, POSITIVE, Method, register_method


@register_method("ttm")
class TTM(Method):
    needs_teacher = True
    uses_teacher = True
    defaults = {"beta": 45.0, "T": 10.0}
    rules = {"beta": NON_NEGATIVE, "T": POSITIVE}
    weighted = False

    def forward_train(self, x: torch.Tensor, y: torch.Tensor, epoch: int):
        logits = self.student(x)
        z_t = self.teacher_logits(x, y)
        match = ttm_loss(logits, z_t, self.args["T"], weighted=self.weighted)
        return logits, {"ce": F.cross_entropy(logits, y), self.name: self.args["beta"] * match}


@register_method("wttm")
class WTTM(TTM):
    defaults = {"beta": 4.0, "T": 5.0}
    weighted = True
