"""The contract every distillation method follows (one class per method, mdistiller style; docs/design.md §5).

A method owns the student (and the teacher, if any) and turns a batch into student logits plus a
dict of named loss terms; the trainer sums the terms, logs each by name, and steps the optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from edgekd.errors import EdgeKDError
from edgekd.models.freeze import freeze_for_inference
from edgekd.registries import METHODS

# An option's rule: a test its (type-checked) value must pass, and how to say it in an error message.
Rule = tuple[Callable[[Any], bool], str]
POSITIVE: Rule = (lambda v: v > 0, "> 0")
NON_NEGATIVE: Rule = (lambda v: v >= 0, ">= 0")
FRACTION: Rule = (lambda v: 0 <= v <= 1, "in [0, 1]")


def linear_warmup(epoch: int, warmup: int) -> float:
    """min((epoch + 1) / warmup, 1), mdistiller's ramp of a distillation term (it counts epochs from 1, edgekd from 0,
    so epoch 0 gets 1/warmup); 1 when ``warmup`` is 0."""
    return 1.0 if warmup <= 0 else min((epoch + 1) / warmup, 1.0)


def one_of(*choices: str) -> Rule:
    return (lambda v: v in choices, "one of " + ", ".join(choices))


def _typed(method: str, key: str, value: Any, default: Any) -> Any:
    """``value`` as the type of the option's default: numbers stay numbers (YAML's '1e-3' string included)."""
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        if isinstance(value, type(default)):
            return value
    elif not isinstance(value, bool):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = None
        if number is not None and (isinstance(default, float) or number.is_integer()):
            return float(number) if isinstance(default, float) else int(number)
    kind = ("an integer" if type(default) is int
            else "a number" if isinstance(default, float) else type(default).__name__)
    raise EdgeKDError(f"method {method!r} option {key} must be {kind}, got {value!r}")


def register_method(name: str):
    """Class decorator: make a method available to ``edgekd distill --method NAME``."""

    def wrap(cls: type[Method]) -> type[Method]:
        cls.name = name
        return METHODS.register(cls)

    return wrap


def float32_logits(model: nn.Module) -> nn.Module:
    """``model``, its logits made float32 under autocast so that every loss softens them in float32. CUDA's autocast
    runs softmax and cross-entropy in float32 anyway; the CPU's runs them in bf16, which rounds KD's terms by several
    percent and R2KD's value term to zero near its target. A deep copy keeps the hook; conv-bn folding
    (``freeze_for_inference``) makes a new module, which needs it again."""
    model.register_forward_hook(_to_float32)
    return model


def _to_float32(module: nn.Module, args: Any, output: Any) -> Any:
    if isinstance(output, torch.Tensor) and output.is_floating_point() and output.dtype != torch.float32:
        return output.float()
    return None


def list_methods() -> list[str]:
    return sorted(METHODS.names())


def method_class(name: str) -> type[Method]:
    return METHODS.lookup(name)


def check_teacher_given(name: str, has_teacher: bool, rectify: bool = False) -> type[Method]:
    """The method class, once it is clear it gets the teacher it needs and ``--rectify`` has a teacher to act on."""
    cls = method_class(name)
    if cls.needs_teacher and not has_teacher:
        raise EdgeKDError(f"method {name!r} needs a teacher: pass --teacher RUN_DIR "
                          "(or a checkpoint with --teacher-arch)")
    if rectify and not cls.uses_teacher:
        raise EdgeKDError(f"--rectify needs a teacher-based method; {name!r} has no teacher")
    return cls


def build_method(
    name: str,
    student: nn.Module,
    teacher: nn.Module | None = None,
    args: dict[str, Any] | None = None,
    *,
    num_classes: int,
    rectify: bool = False,
    input_shape: tuple[int, int, int] | None = None,
    epochs: int = 1,
) -> Method:
    """Instantiate a registered method; unknown names, unknown options and a missing teacher are user errors.

    ``input_shape`` is one sample's (C, H, W); methods that trace the teacher (r2kd with structured pruning) need it.
    ``epochs`` is the run's length, for methods whose loss changes with training progress (drkd, sld).
    """
    cls = check_teacher_given(name, teacher is not None, rectify)
    return cls(student, teacher, args or {}, num_classes=num_classes, rectify=rectify, input_shape=input_shape,
               epochs=epochs)


def frozen_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` under ``torch.inference_mode``, returned as an ordinary tensor the losses can save for backward."""
    with torch.inference_mode():
        z = model(x)
    return z.clone()


class Method(nn.Module):
    """Base class. Subclasses set ``defaults`` (their options) and implement ``forward_train``.

    The teacher, when there is one, is frozen (no gradients) and kept in eval mode whatever ``train()`` is called
    with; it runs under ``torch.inference_mode``. Supplied teachers and DR-KD's snapshots are inference copies with
    conv-bn folded (``freeze_for_inference``); DR-KD's moving average is not, as it changes every step.
    """

    name: ClassVar[str] = ""
    needs_teacher: ClassVar[bool] = False  # the user must supply a teacher
    uses_teacher: ClassVar[bool] = False  # the method distils from a teacher (supplied or made by itself)
    defaults: ClassVar[dict[str, Any]] = {}
    rules: ClassVar[dict[str, Rule]] = {}  # option -> the values it accepts beyond its default's type
    # its loss softens logits with a temperature: it takes the logit_std plug-in (applied through ``soft``)
    softens_logits: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.softens_logits and "logit_std" not in cls.defaults:
            cls.defaults = {**cls.defaults, "logit_std": False}

    @classmethod
    def check_args(cls, args: dict[str, Any]) -> dict[str, Any]:
        """The user's options, typed like the defaults and checked against ``rules``; any mistake is an EdgeKDError.

        Runs when the config is loaded, so a bad ``--arg`` stops the run before data, models or workers start.
        """
        unknown = sorted(set(args) - set(cls.defaults))
        if unknown:
            known = ", ".join(sorted(cls.defaults)) or "none"
            raise EdgeKDError(f"method {cls.name!r} has no option(s) {', '.join(unknown)}; its options are: {known}")
        checked = {}
        for key, value in args.items():
            checked[key] = _typed(cls.name, key, value, cls.defaults[key])
            test, wanted = cls.rules.get(key, (lambda v: True, ""))
            if not test(checked[key]):
                raise EdgeKDError(f"method {cls.name!r} option {key} must be {wanted}, got {value!r}")
        return checked

    @classmethod
    def wants_self_teacher(cls, args: dict[str, Any]) -> bool:
        """True when the teacher is a CE-trained copy of the student, trained first by the trainer if none is given."""
        return False

    @classmethod
    def teacher_label(cls, args: dict[str, Any]) -> str | None:
        """What summary.json names as the teacher when the method makes its own from the student (else None)."""
        return None

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        args: dict[str, Any],
        *,
        num_classes: int,
        rectify: bool = False,
        input_shape: tuple[int, int, int] | None = None,
        epochs: int = 1,
    ) -> None:
        super().__init__()
        self.args = {**self.defaults, **self.check_args(args)}
        self.student = student
        self.teacher = freeze_for_inference(teacher) if teacher is not None else None
        for model in (self.student, self.teacher):
            if model is not None:
                float32_logits(model)
        self.num_classes = num_classes
        self.rectify = rectify
        self.input_shape = input_shape
        self.epochs = max(1, epochs)

    def train(self, mode: bool = True) -> Method:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def learnable_parameters(self):
        """What the optimizer updates: the student only."""
        return self.student.parameters()

    def teacher_logits(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Teacher logits for a batch, rectified against the labels when ``--rectify`` is on."""
        z = frozen_forward(self.teacher, x)
        if self.rectify:
            from edgekd.losses import drkd_rectify

            z = drkd_rectify(z, y)
        return z

    def soft(self, z: torch.Tensor) -> torch.Tensor:
        """The logits a distillation term softens: standardized (``edgekd.losses.standardize_logits``) with the
        ``logit_std`` option, as they are otherwise. Cross-entropy with the labels always takes the raw logits."""
        if self.args.get("logit_std"):
            from edgekd.losses import standardize_logits

            return standardize_logits(z)
        return z

    def on_epoch_start(self, epoch: int) -> None:
        """Hook run before each epoch (0-based); DR-KD takes its teacher snapshot here."""

    def on_step_end(self) -> None:
        """Hook run after each optimizer step that was taken (not after one fp16 skipped); DR-KD's moving average
        follows the student here."""

    def resume_state(self) -> dict[str, torch.Tensor]:
        """State of the method's own that a resumed run needs besides the student's (DR-KD's moving average)."""
        return {}

    def load_resume_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what ``resume_state`` returned."""

    def first_epoch_of(self, fraction: float) -> int:
        """The first (0-based) epoch at or past ``fraction`` of the run: 150 of 240 for 0.625, 0 for 0."""
        return math.ceil(fraction * self.epochs - 1e-9)

    def forward_train(
        self, x: torch.Tensor, y: torch.Tensor, epoch: int,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, epoch: int = 0):
        """Student logits for inference; with labels, a training step's ``(logits, losses)``.

        Routing training through ``forward`` lets DistributedDataParallel wrap the whole method and
        synchronise the student's gradients.
        """
        if y is None:
            return self.student(x)
        return self.forward_train(x, y, epoch)
