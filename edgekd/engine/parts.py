"""The build step of a training run: data, student, teacher, method, optimizer, AMP and loaders, assembled from a
``TrainConfig`` into ``Parts`` that the ``Trainer`` runs. Nothing here trains, except the self-teacher a
self-distillation method asks for, which is a run of its own inside this one's folder."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgekd.config import TrainConfig
from edgekd.contracts.rundir import CHECKPOINT, TEACHER, WEIGHTS
from edgekd.distributed import DistInfo, barrier
from edgekd.engine.checks import (
    check_can_compile,
    check_fits_data,
    check_run_dir,
    default_out,
    load_teacher,
    micro_batch,
    seed_everything,
)
from edgekd.errors import EdgeKDError
from edgekd.methods import Method


@dataclass
class Parts:
    """What a run trains with. ``model`` is what the step calls: the method, or its DDP wrapper under torchrun."""

    cfg: TrainConfig
    device: torch.device
    info: DistInfo
    out: Path
    bundle: Any  # edgekd.data.DataBundle
    method: Method
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    channels_last: bool
    micro_batch: int
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    teacher_label: str | None
    # where the student started (``weights`` or ``init``) and the layer shapes a pruned start keeps, for model.json
    origin: dict[str, Any] = field(default_factory=dict)

    def autocast(self) -> torch.autocast:
        """The precision of every forward pass: ``amp_dtype`` under autocast, or float32."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)


def build_parts(cfg: TrainConfig, device: torch.device, info: DistInfo,
                fit_teacher: Callable[[TrainConfig], Any] | None = None) -> Parts:
    """Check the run dir, then build everything in the order that fixes the random state: seed, data, student,
    teacher, method. A method that distils from a CE-trained copy of the student, where none is given, has it
    trained first by ``fit_teacher`` (``fit_run`` passes itself), and the student is rebuilt from the seed after."""
    from edgekd.data import build_data
    from edgekd.methods import build_method, method_class

    micro = micro_batch(cfg, info.world_size)
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    check_can_compile(cfg, device)
    check_run_dir(out, cfg.resume)
    seed_everything(cfg.seed)
    bundle = build_data(cfg.data, image_size=cfg.image_size, options=cfg.data_options)
    student, bundle, origin = _student(cfg, bundle)
    cls = method_class(cfg.method)
    teacher = load_teacher(cfg, bundle)
    label = cfg.teacher or getattr(teacher, "edgekd_source", None) or (
        cls.teacher_label(cfg.method_args) if teacher is None else None)
    if teacher is None and cls.wants_self_teacher(cfg.method_args):
        teacher = _self_teacher(cfg, info, out, fit_teacher)
        label = str(out / TEACHER)
        seed_everything(cfg.seed)
        student, bundle, origin = _student(cfg, bundle)
    method = build_method(cfg.method, student, teacher, cfg.method_args, num_classes=bundle.num_classes,
                          rectify=cfg.rectify, input_shape=bundle.input_size, epochs=cfg.epochs).to(device)
    channels_last = cfg.channels_last and device.type == "cuda"
    if channels_last:
        method.to(memory_format=torch.channels_last)
    if cfg.compile:
        student.compile()
    model: nn.Module = method
    if info.enabled:
        ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(method, device_ids=ids)
    amp_dtype = _amp_dtype(cfg, device)
    train_loader, val_loader = _loaders(cfg, bundle, info, micro, pin=device.type == "cuda")
    return Parts(cfg, device, info, out, bundle, method, model, _optimizer(cfg, method),
                 torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16), amp_dtype, channels_last,
                 micro, train_loader, val_loader, label, origin)


def _student(cfg: TrainConfig, bundle: Any) -> tuple[nn.Module, Any, dict[str, Any]]:
    """A fresh student, or one started from a run dir (``--init``; a pruned one keeps its shapes) or from pretrained
    weights, with the data now fed as that start expects."""
    from edgekd.contracts.rundir import description_preprocessing
    from edgekd.models import create_model
    from edgekd.models.weights import DEFAULT, pretrained_model
    from edgekd.rundir import load_model

    if cfg.init is not None:
        student, desc = load_model(Path(cfg.init))
        check_fits_data(desc, bundle, f"--init {cfg.init}")
        shapes = {"layer_shapes": desc["layer_shapes"]} if desc.get("layer_shapes") else {}
        return student.train(), bundle.with_preprocessing(description_preprocessing(desc)), {"init": cfg.init,
                                                                                            **shapes}
    choice = cfg.weights or (DEFAULT if cfg.pretrained else None)
    if choice is None:
        return create_model(cfg.model, bundle.num_classes), bundle, {}
    student, spec, source = pretrained_model(cfg.model, bundle.num_classes, choice)
    return student, bundle if spec is None else bundle.with_preprocessing(spec), {"weights": source}


def _self_teacher(cfg: TrainConfig, info: DistInfo, out: Path,
                  fit_teacher: Callable[[TrainConfig], Any] | None) -> nn.Module:
    """The CE copy of the student that self-distillation methods distil from, trained (or resumed) in ``OUT/teacher``
    as a run of its own."""
    from edgekd.rundir import load_model

    teacher_dir = out / TEACHER
    if not (teacher_dir / WEIGHTS).is_file():
        if fit_teacher is None:
            raise ValueError(f"{cfg.method} trains its own teacher first: pass fit_teacher (as fit_run does)")
        sub = dataclasses.replace(cfg, method="ce", method_args={}, teacher=None, teacher_arch=None, rectify=False,
                                  out=str(teacher_dir), resume=(teacher_dir / CHECKPOINT).is_file())
        fit_teacher(sub)
    barrier(info)
    teacher, _ = load_model(teacher_dir)
    return teacher


def _optimizer(cfg: TrainConfig, method: Method) -> torch.optim.Optimizer:
    params = list(method.learnable_parameters())
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=False)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.amp == "off" or (device.type != "cuda" and cfg.amp == "auto"):
        return None
    if cfg.amp in ("fp16", "bf16"):
        return torch.float16 if cfg.amp == "fp16" else torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _loaders(cfg: TrainConfig, bundle: Any, info: DistInfo, micro: int, pin: bool):
    from edgekd.data import make_loader

    train = make_loader(bundle.train_set(), micro, shuffle=True, seed=cfg.seed, workers=cfg.workers,
                        distributed=info.enabled, drop_last=True, pin_memory=pin)
    val = bundle.val_set()
    if info.enabled:  # each rank scores its own slice; sums are reduced, so the accuracy is exact
        val = torch.utils.data.Subset(val, range(info.rank, len(val), info.world_size))
    if len(train) < cfg.accumulate:
        images = len(bundle.raw_train)
        split = f"the training split ({images} images)"
        if info.enabled:
            split = f"each process's share of {split}: {images // info.world_size} over {info.world_size} processes"
        per = f"{micro * cfg.accumulate} per process" if info.enabled else "one step"
        raise EdgeKDError(f"batch_size {cfg.batch_size} (global; {per}) is larger than {split}; lower --batch-size")
    return train, make_loader(val, max(micro, 256), shuffle=False, seed=cfg.seed, workers=cfg.workers, pin_memory=pin)
