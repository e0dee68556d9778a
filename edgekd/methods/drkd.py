"""DR-KD (Amik et al. 2022): the student distils from itself, through rectified teacher logits.

Rectification swaps the teacher's wrong top logit with the true class's, so the true class leads and the rest
of the distribution keeps its shape; it is always on here. The loss is c·CE + w·T²·KL(rectified self ‖
student), where ``ce`` sets c: ``complement`` (1 - w, the paper's form) or ``full`` (1, the labels keep their whole
weight and the self-target is added to them).

Teacher modes (``teacher``): the two readings of the paper's "dynamic" self-teacher, a moving average of the
student, and a supplied one:

- ``online`` (default): the student's own logits from the same forward, detached and rectified; no extra forward
  and no copy. Where it is wrong the term pulls the true class up and the wrongly leading class down, with the
  other classes held where the student itself puts them; where it is right an unsoftened target is its own
  prediction and has no gradient (hence the softening below).
- ``snapshot`` (``dynamic``, its former name and default): before each epoch e >= 1 the teacher becomes a frozen,
  eval-mode copy of the student as it ended epoch e - 1; epoch 0 trains with CE alone.
- ``ema``: an exponential moving average of the student's weights (and BatchNorm statistics), updated after every
  optimizer step with a fixed ``decay``, at the cost of one extra forward. The average so keeps a share of the early
  network for most of a short run; warming the decay up as timm's model EMA does, so that it follows the recent
  steps instead, made the student worse, so the decay stays fixed.
- ``pretrained``: a CE-trained copy of the student's architecture, supplied (or trained first) by the trainer.

The self-target's weight w follows ``schedule``: ``constant`` (alpha throughout) or ``linear`` (grows to alpha at
the last epoch, as progressive self-distillation, PS-KD, does), and is 0 before ``start`` (a fraction of the
run), so an early, still-weak self-teacher cannot outweigh the labels.

The self-target is softened: ``smoothing`` mixes it with the uniform distribution, as label smoothing mixes the
one-hot label, and ``target_T`` softens it at a temperature of its own (0: T). Either gives the online target a
gradient where the student is right: a pull towards a less confident prediction, flat (smoothing) or shaped like
the student's own distribution (target_T).

Defaults (online, linear to 0.9, T 4, ``ce`` full, smoothing 0.1), from ``benchmarks/results/drkd-screen.md``
(ten seeds on each set): the only setting measured that is not below plain cross-entropy on either set; level
with it or slightly ahead, and level with label smoothing alone. Without smoothing it is further ahead on
synthetic and one image behind on digits; ``target_T`` 8 (without smoothing) is ahead on synthetic and behind on
digits. The online teacher costs no extra forward; snapshots, a moving average and a pre-trained copy of the
student were level with or behind it. With ``ce`` full the labels keep their whole weight; the paper's (1 - w)
scales CE down on everything the student already gets right, which costs accuracy once w is large.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from edgekd.errors import EdgeKDError
from edgekd.losses import drkd_target, kd_loss_to_target
from edgekd.methods.base import (
    FRACTION,
    POSITIVE,
    Method,
    float32_logits,
    frozen_forward,
    one_of,
    register_method,
)
from edgekd.methods.tfkd import check_self_teacher
from edgekd.models.freeze import freeze_for_inference

TEACHER_MODES = ("online", "snapshot", "dynamic", "ema", "pretrained")
SCHEDULES = ("constant", "linear")
CE_WEIGHTS = ("complement", "full")


@register_method("drkd")
class DRKD(Method):
    needs_teacher = False  # depends on the mode; checked in __init__
    uses_teacher = True
    softens_logits = True
    defaults = {"alpha": 0.9, "T": 4.0, "teacher": "online", "schedule": "linear", "start": 0.0, "ce": "full",
                "decay": 0.999, "smoothing": 0.1, "target_T": 0.0}
    rules = {"alpha": FRACTION, "T": POSITIVE, "teacher": one_of(*TEACHER_MODES), "schedule": one_of(*SCHEDULES),
             "start": (lambda v: 0 <= v < 1, "in [0, 1)"), "ce": one_of(*CE_WEIGHTS),
             "decay": (lambda v: 0 < v < 1, "in (0, 1)"), "smoothing": FRACTION,
             "target_T": (lambda v: v >= 0, ">= 0 (0: the same as T)")}

    @classmethod
    def wants_self_teacher(cls, args: dict[str, Any]) -> bool:
        return args.get("teacher", cls.defaults["teacher"]) == "pretrained"

    @classmethod
    def teacher_label(cls, args: dict[str, Any]) -> str | None:
        mode = args.get("teacher", cls.defaults["teacher"])
        if mode == "online":
            return "self (own logits, same forward)"
        if mode == "ema":
            return "self (moving average of the student's weights)"
        return "self (previous-epoch snapshot)" if mode in ("snapshot", "dynamic") else None

    def __init__(self, student, teacher, args, **options) -> None:
        super().__init__(student, teacher, args, **options)
        mode = self.args["teacher"]
        if mode == "pretrained":
            if teacher is None:
                raise EdgeKDError("drkd with teacher: pretrained needs a CE-trained student: pass --teacher RUN_DIR")
            check_self_teacher(self.name, student, teacher)
        elif teacher is not None:
            raise EdgeKDError(f"drkd with teacher: {mode} makes its own teacher from the student; drop --teacher, "
                              "or set method_args teacher: pretrained to distil from the given run")
        if mode == "ema":
            ema = get_ema_multi_avg_fn(self.args["decay"])
            self.teacher = AveragedModel(student, multi_avg_fn=ema, use_buffers=True).eval().requires_grad_(False)
        self.start_epoch = self.first_epoch_of(self.args["start"])

    def weight(self, epoch: int) -> float:
        """The self-target's weight w in epoch ``epoch`` (0-based)."""
        if epoch < self.start_epoch:
            return 0.0
        if self.args["schedule"] == "linear":
            return self.args["alpha"] * min(1.0, (epoch - self.start_epoch + 1) / (self.epochs - self.start_epoch))
        return self.args["alpha"]

    def on_epoch_start(self, epoch: int) -> None:
        """Snapshot mode: refresh the teacher from the student as it is now, i.e. at the end of epoch - 1."""
        if self.args["teacher"] in ("snapshot", "dynamic") and epoch >= max(1, self.start_epoch):
            self.teacher = float32_logits(freeze_for_inference(self.student))

    def on_step_end(self) -> None:
        """EMA mode: move the average one step towards the student's new weights."""
        if self.args["teacher"] == "ema":
            self.teacher.update_parameters(self.student)

    def resume_state(self) -> dict[str, torch.Tensor]:
        return self.teacher.state_dict() if self.args["teacher"] == "ema" else {}

    def load_resume_state(self, state: dict[str, torch.Tensor]) -> None:
        if self.args["teacher"] == "ema":
            self.teacher.load_state_dict(state)

    def forward_train(self, x: torch.Tensor, y: torch.Tensor, epoch: int):
        logits = self.student(x)
        ce = F.cross_entropy(logits, y)
        w = self.weight(epoch)
        if self.args["teacher"] == "online":
            z_t = logits.detach()
        elif self.teacher is None:
            w = 0.0
        else:
            z_t = frozen_forward(self.teacher, x)
        if w == 0.0:
            return logits, {"ce": ce}
        c = 1.0 if self.args["ce"] == "full" else 1 - w
        T = self.args["T"]
        target = drkd_target(self.soft(z_t), y, self.args["target_T"] or T, self.args["smoothing"])
        return logits, {"ce": c * ce, "kd": w * kd_loss_to_target(self.soft(logits), target, T)}
