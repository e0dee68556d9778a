"""Training configuration: a YAML recipe, then command-line flags on top, validated in one place."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edgekd.errors import EdgeKDError
from edgekd.registries import DATASETS, METHODS, MODELS
from edgekd.settings import SECTIONS, read_recipe

CHOICES = {
    "optimizer": ("sgd", "adamw"),
    "schedule": ("multistep", "cosine"),
    "device": ("auto", "cpu", "cuda"),
    "amp": ("auto", "off", "bf16", "fp16"),
}


@dataclass
class TrainConfig:
    """Everything a `train` or `distill` run needs; written back as the run's ``config.yaml``."""

    data: str = "digits"
    data_options: dict[str, Any] = field(default_factory=dict)
    image_size: int | None = None
    model: str = "resnet20"
    pretrained: bool = False  # start the model (the student) from its architecture's default published weights
    weights: str | None = None  # or from these: a published weights name (IMAGENET1K_V1) or a torch.save file
    init: str | None = None  # or from this run dir's model (its architecture, pruned shapes and weights)
    epochs: int = 10
    batch_size: int = 64  # the global batch: one optimizer step sees this many images, however many processes
    accumulate: int = 1  # micro-batches per optimizer step in each process (gradient accumulation)
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    milestones: list[int] = field(default_factory=list)
    lr_decay: float = 0.1
    warmup_epochs: int = 0
    method: str = "ce"
    method_args: dict[str, Any] = field(default_factory=dict)
    teacher: str | None = None
    teacher_arch: str | None = None
    teacher_weights: str | None = None  # with teacher_arch and no teacher: published weights or a file, head included
    rectify: bool = False
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool = True
    compile: bool = False
    tensorboard: bool = False  # also write each epoch's scalars as TensorBoard events in the run dir
    workers: int = 0
    out: str | None = None
    resume: bool = False

    def validate(self) -> TrainConfig:
        METHODS.check(self.method)  # names first, from the registries' metadata: a typo is answered before torch loads
        for arch in (self.model, self.teacher_arch):
            if arch is not None:
                MODELS.check(arch)
        DATASETS.check(self.data.partition(":")[0])
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise EdgeKDError(f"{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "accumulate": self.accumulate, "lr": self.lr}
        for name, value in positive.items():
            if value <= 0:
                raise EdgeKDError(f"{name} must be > 0, got {value}")
        for name in ("weight_decay", "momentum", "warmup_epochs", "workers"):
            if getattr(self, name) < 0:
                raise EdgeKDError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.pretrained and self.weights:
            raise EdgeKDError(f"pass either --pretrained (the default weights) or --weights {self.weights}, not both")
        if self.teacher_weights is not None and (self.teacher is not None or not self.teacher_arch):
            raise EdgeKDError("--teacher-weights starts the teacher --teacher-arch from published weights or a file; "
                              "pass --teacher-arch, and no --teacher")
        if self.init is not None and (self.pretrained or self.weights):
            raise EdgeKDError(f"--init {self.init} starts from that run's weights; drop --pretrained/--weights")
        if self.image_size is not None and self.image_size <= 0:
            raise EdgeKDError(f"image_size must be > 0, got {self.image_size}")
        if self.warmup_epochs >= self.epochs and self.warmup_epochs:
            raise EdgeKDError(f"warmup_epochs ({self.warmup_epochs}) must be smaller than epochs ({self.epochs})")
        if not self.momentum < 1:
            raise EdgeKDError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0 < self.lr_decay <= 1:
            raise EdgeKDError(f"lr_decay must be in (0, 1], got {self.lr_decay}")
        if not all(isinstance(m, int) and not isinstance(m, bool) for m in self.milestones):
            raise EdgeKDError(f"milestones must be whole epochs, got {self.milestones}")
        # the trainer derives per-epoch seeds as seed * 1_000_003 + ...: keep them in 64 bits
        if not 0 <= self.seed < 2**32:
            raise EdgeKDError(f"seed must be in [0, 2**32), got {self.seed}")
        if self.schedule == "multistep" and any(m <= 0 or m >= self.epochs for m in self.milestones):
            raise EdgeKDError(
                f"milestones {self.milestones} must lie strictly between 0 and epochs ({self.epochs}); "
                "pass --milestones that fit, or --milestones '' to decay at 62.5/75/87.5% of the epochs"
            )
        from edgekd.methods import method_class  # torch: only training configs get here

        self.method_args = method_class(self.method).check_args(self.method_args)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_TYPES = {"int": int, "float": (int, float), "str": str, "bool": bool}


def _check_type(name: str, value: Any) -> Any:
    annotation = str(_FIELDS[name].type)
    if value is None:
        if "None" not in annotation:
            raise EdgeKDError(f"config key {name!r} cannot be empty")
        return None
    base = annotation.split("|")[0].strip().split("[")[0]
    if base == "float" and isinstance(value, str):
        try:  # YAML 1.1 reads 1e-3 (no dot) as a string; it is the number everyone means
            value = float(value)
        except ValueError:
            pass
    expected = {"dict": dict, "list": list}.get(base, _TYPES.get(base))
    if expected is None or (isinstance(value, bool) and base in ("int", "float")) or not isinstance(value, expected):
        raise EdgeKDError(f"config key {name!r} must be of type {annotation}, got {value!r}")
    return float(value) if base == "float" else value


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the YAML file, then explicit overrides (flags); unknown keys and bad values are errors."""
    values: dict[str, Any] = {}
    if path is not None:  # its prune:, export:, ... sections are the later stages' (edgekd.settings)
        values.update({k: v for k, v in read_recipe(path).items() if k not in SECTIONS})
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key == "method_args" and isinstance(value, dict) and isinstance(values.get(key), dict):
            value = {**values[key], **value}  # --arg adds to (or changes) a recipe's method options, not replaces them
        values[key] = value
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise EdgeKDError(f"unknown config key(s): {', '.join(unknown)}; valid keys: {', '.join(_FIELDS)}")
    if values.get("init") is not None:
        values["model"] = _init_arch(str(values["init"]), values.get("model"))
    return TrainConfig(**{k: _check_type(k, v) for k, v in values.items()}).validate()


def run_recipe(path: str | Path | None, overrides: dict[str, Any]) -> str | Path | None:
    """The recipe a run starts from: the one given, else for a ``resume`` the settings its run dir saved
    (``config.yaml``)."""
    out = overrides.get("out")
    saved = Path(out) / "config.yaml" if overrides.get("resume") and out else None
    return saved if path is None and saved is not None and saved.is_file() else path


def run_config(path: str | Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """``load_config`` for a run about to start, from its ``run_recipe``; the values given now still win."""
    return load_config(run_recipe(path, overrides), overrides)


def _init_arch(init: str, model: Any) -> str:
    """The architecture a run started with ``--init`` trains: the init run's own (a pruned one included)."""
    from edgekd.contracts.rundir import read_description

    arch = read_description(init)["arch"]
    if model is not None and model != arch:
        raise EdgeKDError(f"--init {init} holds a {arch}, not a {model}; drop --model/--student (or the recipe's "
                          f"model key) to start from that run, or drop --init to train a fresh {model}")
    return arch


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    from edgekd.fsutil import write_text

    write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
