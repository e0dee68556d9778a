"""DR-KD (Amik et al. 2022): the student distils from itself, through rectified teacher logits.

Rectification swaps the teacher's wrong top logit with the true class's, so the true class leads and the
rest of the distribution keeps its shape; it is always on here. Teacher modes:

- ``dynamic`` (default): before each epoch e >= 1 the teacher becomes a frozen, eval-mode snapshot of the
  student as it ended epoch e - 1; epoch 0 trains with CE alone. No extra training run.
- ``pretrained``: a CE-trained copy of the student's architecture, supplied (or trained first) by the trainer.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from edgekd.errors import EdgeKDError
from edgekd.losses import drkd_rectify, kd_loss
from edgekd.methods.base import FRACTION, POSITIVE, Method, frozen_forward, one_of, register_method
from edgekd.methods.tfkd import check_self_teacher
from edgekd.models.freeze import freeze_for_inference

TEACHER_MODES = ("dynamic", "pretrained")


@register_method("drkd")
class DRKD(Method):
    needs_teacher = False  # depends on the mode; checked in __init__
    uses_teacher = True
    defaults = {"alpha": 0.9, "T": 4.0, "teacher": "dynamic"}
    rules = {"alpha": FRACTION, "T": POSITIVE, "teacher": one_of(*TEACHER_MODES)}

    @classmethod
    def wants_self_teacher(cls, args: dict[str, Any]) -> bool:
        return args.get("teacher", cls.defaults["teacher"]) == "pretrained"

    def __init__(self, student, teacher, args, **options) -> None:
        super().__init__(student, teacher, args, **options)
        if self.args["teacher"] == "pretrained":
            if teacher is None:
                raise EdgeKDError("drkd with teacher: pretrained needs a CE-trained student: pass --teacher RUN_DIR")
            check_self_teacher(self.name, student, teacher)
        elif teacher is not None:
            raise EdgeKDError("drkd with teacher: dynamic makes its own teacher from the student; drop --teacher, "
                              "or set method_args teacher: pretrained to distil from the given run")

    def on_epoch_start(self, epoch: int) -> None:
        """Dynamic mode: refresh the snapshot from the student as it is now, i.e. at the end of epoch - 1."""
        if self.args["teacher"] != "dynamic" or epoch < 1:
            return
        self.teacher = freeze_for_inference(self.student)

    def forward_train(self, x: torch.Tensor, y: torch.Tensor, epoch: int):
        logits = self.student(x)
        ce = F.cross_entropy(logits, y)
        if self.teacher is None:
            return logits, {"ce": ce}
        a, T = self.args["alpha"], self.args["T"]
        z_t = drkd_rectify(frozen_forward(self.teacher, x), y)
        return logits, {"ce": (1 - a) * ce, "kd": a * kd_loss(logits, z_t, T)}
