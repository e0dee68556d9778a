"""SLD, Swapped Logit Distillation (Limantoro et al., Multimedia Systems 2025).

Two targets, both "swapped" (DR-KD's rectification: a wrong top class trades its logit with the true class's):
the teacher's logits throughout, and, from ``self_start`` of the run on, the student's own logits too. Each KD
term is summed over the temperatures 1..``max_T``, and everything is computed on a weak view (the batch as the
loader gives it) and a strong view (``augment``, AutoAugment's CIFAR policy by default) seen in separate calls:

    loss = ce_weight·Σ_views CE(z_s, y) + kd_weight·Σ_views sld_loss(z_s, z_t, y, 1..max_T[, z_s])

Defaults are the authors' CIFAR-100 release: CE 0.1, KD 0.9 (mdistiller's KD weights, which its config keeps),
T = 1..6, the self target from epoch 150 of 240. The KD term then outweighs CE many times over, so these weights
want the release's learning rate per image (lr 0.05 at batch 64): scale ``lr`` with the batch size. The release
lets gradient flow through the student's swapped logits as a target; here the target is detached, which leaves
every loss value the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgekd.errors import EdgeKDError
from edgekd.losses import sld_loss
from edgekd.methods.augment import AUGMENTATIONS, AUTOAUGMENT_POLICIES, batch_augment, with_augmented_view
from edgekd.methods.base import FRACTION, NON_NEGATIVE, Method, frozen_forward, one_of, register_method


@register_method("sld")
class SLD(Method):
    needs_teacher = True
    uses_teacher = True
    softens_logits = True
    defaults = {
        "ce_weight": 0.1,
        "kd_weight": 0.9,
        "max_T": 6,
        "self_start": 0.625,
        "augment": "autoaugment",
        "autoaugment_policy": "cifar10",
    }
    rules = {
        "ce_weight": NON_NEGATIVE,
        "kd_weight": NON_NEGATIVE,
        "max_T": (lambda v: 1 <= v <= 20, "between 1 and 20"),
        "self_start": FRACTION,
        "augment": one_of(*AUGMENTATIONS),
        "autoaugment_policy": one_of(*AUTOAUGMENT_POLICIES),
    }

    def __init__(self, student, teacher, args, **options) -> None:
        super().__init__(student, teacher, args, **options)
        if self.rectify:
            raise EdgeKDError("sld swaps (rectifies) its targets itself; drop --rectify")
        a = self.args
        self.augment = batch_augment(a["augment"], a["autoaugment_policy"], self.num_classes)
        self.temperatures = [float(t) for t in range(1, a["max_T"] + 1)]
        self.self_epoch = self.first_epoch_of(a["self_start"])  # 1.0: never (the epoch after the last)

    def forward_train(self, x: torch.Tensor, y: torch.Tensor, epoch: int):
        a, b = self.args, x.shape[0]
        with torch.no_grad():
            views = with_augmented_view(self.augment, x, y)
        z_t = frozen_forward(self.teacher, views)
        own = epoch >= self.self_epoch
        ce = kd = x.new_zeros(())
        for v in range(0, views.shape[0], b):
            z_s = self.student(views[v : v + b])
            if v == 0:
                logits = z_s
            ce = ce + F.cross_entropy(z_s, y)
            soft = self.soft(z_s)
            kd = kd + sld_loss(soft, self.soft(z_t[v : v + b]), y, self.temperatures, soft if own else None)
        return logits, {"ce": a["ce_weight"] * ce, "kd": a["kd_weight"] * kd}
