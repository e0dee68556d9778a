"""The training loop behind `edgekd train` (method ``ce``) and `edgekd distill` (any registered method).

One process or many (torchrun/DDP); CPU or CUDA (AMP, channels_last). Every epoch ends with a held-out
evaluation, a line in ``metrics.jsonl`` and an atomic ``checkpoint.pt``, so a killed run resumes where it
stopped. The random state is re-derived from the seed at each epoch, so a resumed CPU run reproduces an
uninterrupted one exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pickle
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgekd.config import TrainConfig, save_config
from edgekd.distributed import DistInfo, all_reduce_sum, barrier, init_from_env, shutdown
from edgekd.errors import EdgeKDError
from edgekd.fsutil import atomic_path, check_can_create, make_dir, remove_empty, write_json
from edgekd.models.checkpoint import load_problem

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
# what a run writes before its first checkpoint; a folder holding only these is a run that stopped early (its
# self-trained teacher is kept and reused; `prune --recover-epochs` puts its pruned start beside), anything else
# in --out belongs to someone else
TENSORBOARD = "tensorboard"
RUN_ENTRIES = {"config.yaml", METRICS, "teacher", "pruned", "curves.png", "summary.json", "model.json", TENSORBOARD}


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise EdgeKDError("--device cuda was asked for, but no CUDA GPU is visible; use --device auto or cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def default_out(cfg: TrainConfig) -> Path:
    data = cfg.data.split(":")[0]
    return Path("runs") / f"{cfg.method}-{cfg.model}-{data}-s{cfg.seed}"


def lr_factor(cfg: TrainConfig, progress_epochs: float) -> float:
    """Learning-rate multiplier at a fractional epoch: linear warm-up, then cosine or step decay."""
    if cfg.warmup_epochs and progress_epochs < cfg.warmup_epochs:
        return (progress_epochs + 1e-8) / cfg.warmup_epochs
    if cfg.schedule == "cosine":
        span = max(cfg.epochs - cfg.warmup_epochs, 1e-8)
        return 0.5 * (1.0 + math.cos(math.pi * (progress_epochs - cfg.warmup_epochs) / span))
    milestones = cfg.milestones or [round(cfg.epochs * f) for f in (0.625, 0.75, 0.875)]
    return cfg.lr_decay ** sum(progress_epochs >= m for m in milestones)


def micro_batch(cfg: TrainConfig, world_size: int) -> int:
    """Images per forward pass in each process: the global ``batch_size`` over processes and accumulation steps.

    The global batch is the recipe's: 1 or N processes, with or without accumulation, take the same optimizer steps.
    """
    share, rest = divmod(cfg.batch_size, world_size * cfg.accumulate)
    if rest or not share:
        parts = (f"{world_size} process{'es' if world_size > 1 else ''} x "
                 f"{cfg.accumulate} accumulation step{'s' if cfg.accumulate > 1 else ''}")
        raise EdgeKDError(
            f"batch_size {cfg.batch_size} (the global batch) does not split evenly over {parts}; "
            f"pass a multiple of {world_size * cfg.accumulate} as --batch-size, or change --nproc or --accumulate"
        )
    return share


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_teacher_path(cfg: TrainConfig) -> Path | None:
    """The ``--teacher`` path, if the method takes one, checked to exist and to say what it holds."""
    from edgekd.methods import method_class
    from edgekd.rundir import read_description

    if cfg.teacher is None or not method_class(cfg.method).uses_teacher:
        return None
    path = Path(cfg.teacher)
    if path.is_dir():
        read_description(path)
    elif not path.is_file():
        raise EdgeKDError(f"teacher {path} does not exist; pass an edgekd run dir or a checkpoint file")
    elif not cfg.teacher_arch:
        raise EdgeKDError(
            f"{path} is a checkpoint file: also pass --teacher-arch (e.g. resnet32x4) to say what it holds")
    return path


def load_teacher(cfg: TrainConfig, bundle: Any) -> nn.Module | None:
    """The teacher named by ``--teacher``: an edgekd run dir, or a foreign checkpoint with ``--teacher-arch``; or
    ``--teacher-arch`` started from published weights or a file (``--teacher-weights``).

    A run dir records what its model was trained on, which must fit this run's data; a foreign checkpoint is
    checked by shape only; published weights must fit whole, head included, and expect this run's inputs.
    """
    num_classes = bundle.num_classes
    path = check_teacher_path(cfg)
    if path is None:
        return _published_teacher(cfg, bundle)
    from edgekd.models import create_model, load_checkpoint_file
    from edgekd.rundir import load_model

    if path.is_dir():
        teacher, desc = load_model(path)
    else:
        teacher = create_model(cfg.teacher_arch, num_classes)
        load_checkpoint_file(teacher, path)
        desc = {"num_classes": num_classes}
    check_fits_data(desc, bundle, f"teacher {path}")
    return teacher


def _published_teacher(cfg: TrainConfig, bundle: Any) -> nn.Module | None:
    from edgekd.methods import method_class
    from edgekd.models.weights import pretrained_model

    if cfg.teacher_weights is None or not method_class(cfg.method).uses_teacher:
        return None
    teacher, spec, source = pretrained_model(cfg.teacher_arch, bundle.num_classes, cfg.teacher_weights, whole=True)
    fed = bundle.preprocessing
    if spec is not None and (spec.size, spec.mean, spec.std) != (fed.size, fed.mean, fed.std):
        raise EdgeKDError(
            f"the teacher weights {source} expect {spec.size[0]}x{spec.size[1]} inputs normalised with mean "
            f"{spec.mean}, but this run feeds {fed.size[0]}x{fed.size[1]} with mean {fed.mean}; start the student "
            "from weights of the same preprocessing (--pretrained) or fine-tune the teacher on this data first"
        )
    teacher.edgekd_source = source  # what summary.json names as the teacher
    return teacher


def check_fits_data(desc: dict[str, Any], bundle: Any, what: str) -> None:
    """A model trained on other classes or another image size than this run's data would distil (or start from)
    noise."""
    if desc["num_classes"] != bundle.num_classes:
        raise EdgeKDError(f"{what} has {desc['num_classes']} classes but the data has {bundle.num_classes}")
    if "class_names" in desc and list(desc["class_names"]) != list(bundle.class_names):
        raise EdgeKDError(
            f"{what} was trained on other classes ({desc.get('dataset')}: "
            f"{', '.join(map(str, desc['class_names'][:3]))}, ...) "
            f"than this run's data ({bundle.spec}: {', '.join(map(str, bundle.class_names[:3]))}, ...); "
            "use a model of the same dataset"
        )
    if "input_size" in desc and tuple(desc["input_size"]) != tuple(bundle.input_size):
        size = desc["input_size"][-1]
        raise EdgeKDError(
            f"{what} was trained on {'x'.join(map(str, desc['input_size']))} inputs but this run feeds "
            f"{'x'.join(map(str, bundle.input_size))}; pass --image-size {size} or use a model trained at this size"
        )


def check_run_dir(out: Path, resume: bool) -> None:
    """``out`` can hold this run: writable, and holding a run exactly when ``--resume`` says it does."""
    check_can_create(out, "folder")
    ckpt = out / CHECKPOINT
    if resume and not ckpt.is_file():
        raise EdgeKDError(f"--resume: {ckpt} does not exist; start without --resume")
    if not resume and (ckpt.exists() or (out / "model.safetensors").exists()):
        raise EdgeKDError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    # hidden names are skipped: under DDP another rank may be mid-way through an atomic write (.config.yaml.*.tmp)
    foreign = (sorted(p.name for p in out.iterdir() if p.name not in RUN_ENTRIES and not p.name.startswith("."))
               if out.is_dir() else [])
    if not resume and foreign:
        raise EdgeKDError(
            f"{out} already exists and holds other files ({', '.join(foreign[:3])}); choose another --out or remove it")


def preflight(cfg: TrainConfig, processes: int) -> None:
    """The checks of a run that need no data loaded: device (one GPU per process), run dir, teacher, dataset path.

    ``--nproc`` runs them once before launching its processes, so a user mistake is one line, not one per rank.
    """
    from edgekd.data import check_data_spec
    from edgekd.methods.base import check_teacher_given, method_class

    if resolve_device(cfg.device).type == "cuda" and processes > torch.cuda.device_count():
        raise EdgeKDError(
            f"--nproc {processes} needs one GPU per process, and {torch.cuda.device_count()} are visible; "
            f"pass --nproc {torch.cuda.device_count()}, or --device cpu"
        )
    micro_batch(cfg, processes)
    check_can_compile(cfg, resolve_device(cfg.device))
    check_run_dir(Path(cfg.out) if cfg.out else default_out(cfg), cfg.resume)
    check_data_spec(cfg.data)
    # its teacher is trained first when none is given
    self_taught = method_class(cfg.method).wants_self_teacher(cfg.method_args)
    given = check_teacher_path(cfg) is not None or cfg.teacher_weights is not None
    check_teacher_given(cfg.method, self_taught or given, cfg.rectify)


def check_can_compile(cfg: TrainConfig, device: torch.device) -> None:
    """``--compile`` on CPU builds C++ kernels with torch's inductor, which runs ``$CXX`` (else g++; clang++ on
    macOS): without it the run would fail at its first step with a traceback, after the data and models were built."""
    if not cfg.compile or device.type != "cpu":
        return
    compiler = os.environ.get("CXX") or ("clang++" if sys.platform == "darwin" else "g++")
    if shutil.which(compiler) is None:
        raise EdgeKDError(f"--compile on CPU needs a C++ compiler for torch's inductor, and {compiler} is not on "
                          "PATH; install one (apt-get install g++, or set CXX) or drop --compile")


class _Run:
    def __init__(self, cfg: TrainConfig, device: torch.device, info: DistInfo, show_progress: bool) -> None:
        from edgekd.data import build_data, make_loader
        from edgekd.methods import build_method, method_class

        self.cfg, self.device, self.info = cfg, device, info
        self.micro_batch = micro_batch(cfg, info.world_size)
        self.show_progress = show_progress and info.is_main
        self.out = Path(cfg.out) if cfg.out else default_out(cfg)
        check_can_compile(cfg, device)
        check_run_dir(self.out, cfg.resume)
        seed_everything(cfg.seed)
        self.bundle = build_data(cfg.data, image_size=cfg.image_size, options=cfg.data_options)
        student = self._make_student()
        cls = method_class(cfg.method)
        teacher = load_teacher(cfg, self.bundle)
        # what summary.json and model.json name as the teacher
        self.teacher_label = cfg.teacher or getattr(teacher, "edgekd_source", None) or (
            cls.teacher_label(cfg.method_args) if teacher is None else None)
        if teacher is None and cls.wants_self_teacher(cfg.method_args):
            teacher = self._train_self_teacher()
            self.teacher_label = str(self.out / "teacher")
            seed_everything(cfg.seed)
            student = self._make_student()
        self.method = build_method(
            cfg.method, student, teacher, cfg.method_args, num_classes=self.bundle.num_classes, rectify=cfg.rectify,
            input_shape=self.bundle.input_size, epochs=cfg.epochs,
        ).to(device)
        self.channels_last = cfg.channels_last and device.type == "cuda"
        if self.channels_last:
            self.method.to(memory_format=torch.channels_last)
        if cfg.compile:
            student.compile()
        self.engine: nn.Module = self.method
        if info.enabled:
            ids = [device.index] if device.type == "cuda" else None
            self.engine = nn.parallel.DistributedDataParallel(self.method, device_ids=ids)
        self.optimizer = self._make_optimizer()
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        pin = device.type == "cuda"
        self.train_loader = make_loader(
            self.bundle.train_set(), self.micro_batch, shuffle=True, seed=cfg.seed, workers=cfg.workers,
            distributed=info.enabled, drop_last=True, pin_memory=pin,
        )
        val = self.bundle.val_set()
        if info.enabled:  # each rank scores its own slice; sums are reduced, so the accuracy is exact
            val = torch.utils.data.Subset(val, range(info.rank, len(val), info.world_size))
        self.val_loader = make_loader(val, max(self.micro_batch, 256), shuffle=False, seed=cfg.seed,
                                      workers=cfg.workers, pin_memory=pin)
        if len(self.train_loader) < cfg.accumulate:
            images = len(self.bundle.raw_train)
            split = f"the training split ({images} images)"
            if info.enabled:
                split = f"each process's share of {split}: {images // info.world_size} over {info.world_size} processes"
            per = f"{self.micro_batch * cfg.accumulate} per process" if info.enabled else "one step"
            raise EdgeKDError(f"batch_size {cfg.batch_size} (global; {per}) is larger than {split}; lower --batch-size")
        self.start_epoch, self.best_acc, self.history = 0, 0.0, []
        if cfg.resume:
            self._load_checkpoint()

    # ----------------------------------------------------------------- set-up
    def _make_student(self) -> nn.Module:
        """A fresh student, or one started from a run dir or pretrained weights, whose preprocessing the data then
        takes."""
        from edgekd.models import create_model
        from edgekd.models.weights import DEFAULT, pretrained_model

        choice = self.cfg.weights or (DEFAULT if self.cfg.pretrained else None)
        self.weights_source = None
        self.init_shapes: dict[str, Any] = {}
        if self.cfg.init is not None:
            return self._init_student(Path(self.cfg.init))
        if choice is None:
            return create_model(self.cfg.model, self.bundle.num_classes)
        student, spec, self.weights_source = pretrained_model(self.cfg.model, self.bundle.num_classes, choice)
        if spec is not None:
            self.bundle = self.bundle.with_preprocessing(spec)
        return student

    def _init_student(self, path: Path) -> nn.Module:
        """The model of run dir ``path`` (a pruned one keeps its shapes), trained on with that run's preprocessing."""
        from edgekd.contracts.rundir import description_preprocessing
        from edgekd.rundir import load_model

        student, desc = load_model(path)
        check_fits_data(desc, self.bundle, f"--init {path}")
        self.bundle = self.bundle.with_preprocessing(description_preprocessing(desc))
        self.init_shapes = {"layer_shapes": desc["layer_shapes"]} if desc.get("layer_shapes") else {}
        return student.train()

    def _train_self_teacher(self) -> nn.Module:
        """Train the CE copy of the student that self-distillation methods distil from, inside this run dir."""
        from edgekd.rundir import load_model

        teacher_dir = self.out / "teacher"
        if not (teacher_dir / "model.safetensors").is_file():
            sub = dataclasses.replace(
                self.cfg, method="ce", method_args={}, teacher=None, teacher_arch=None, rectify=False,
                out=str(teacher_dir), resume=(teacher_dir / CHECKPOINT).is_file(),
            )
            _Run(sub, self.device, self.info, self.show_progress).fit()
        barrier(self.info)
        teacher, _ = load_model(teacher_dir)
        return teacher

    def _make_optimizer(self) -> torch.optim.Optimizer:
        params = list(self.method.learnable_parameters())
        if self.cfg.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.cfg.lr, momentum=self.cfg.momentum,
                                   weight_decay=self.cfg.weight_decay, nesterov=False)
        return torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    def _amp_dtype(self) -> torch.dtype | None:
        if self.cfg.amp == "off" or (self.device.type != "cuda" and self.cfg.amp == "auto"):
            return None
        if self.cfg.amp == "fp16":
            return torch.float16
        if self.cfg.amp == "bf16":
            return torch.bfloat16
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    # ------------------------------------------------------------- checkpoint
    def _save_checkpoint(self, epoch: int) -> None:
        state = {
            "epoch": epoch,
            "student": self.method.student.state_dict(),
            "method": self.method.resume_state(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best_acc": self.best_acc,
            "history": self.history,
        }
        with atomic_path(self.out / CHECKPOINT) as tmp:
            torch.save(state, tmp)

    def _load_checkpoint(self) -> None:
        path = self.out / CHECKPOINT
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
            self.method.student.load_state_dict(state["student"])
            self.method.load_resume_state(state.get("method", {}))
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            self.start_epoch, self.best_acc, self.history = (
                int(state["epoch"]), float(state["best_acc"]), list(state["history"]))
        except (RuntimeError, KeyError, EOFError, ValueError, TypeError, OSError, pickle.UnpicklingError) as e:
            what = f"no {e}" if isinstance(e, KeyError) else load_problem(e)
            raise EdgeKDError(
                f"{path} cannot be resumed ({what}); it is corrupt, or from another model or config (resume with the "
                f"run's own settings: -c {self.out / 'config.yaml'})"
            ) from None

    # ---------------------------------------------------------------- loop
    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        created: list[Path] = []  # a run that fails before its first checkpoint removes the folders it made
        if self.info.is_main:
            created = make_dir(self.out)
            save_config(cfg, self.out / "config.yaml")
        try:
            return self._fit()
        except BaseException:
            if created and not (self.out / CHECKPOINT).exists():
                shutil.rmtree(self.out, ignore_errors=True)
                remove_empty(created[1:])
            raise

    def _fit(self) -> dict[str, Any]:
        from edgekd.rundir import model_description, save_model

        cfg = self.cfg
        started = time.perf_counter()
        with self._progress() as progress, self._scalars() as scalars:
            for epoch in range(self.start_epoch, cfg.epochs):
                row = self._train_epoch(epoch, progress)
                row["val_acc"] = self._evaluate()
                self.best_acc = max(self.best_acc, row["val_acc"])
                self.history.append(row)
                if self.info.is_main:
                    write_json_lines(self.out / METRICS, self.history)
                    scalars(row)
                    self._save_checkpoint(epoch + 1)
                    if progress is not None:
                        progress.console.print(_epoch_line(row, cfg.epochs))
        final = self.history[-1]
        seconds = sum(r["seconds"] for r in self.history)
        teacher = self.teacher_label
        summary = {
            "best_acc": self.best_acc,
            "final_acc": final["val_acc"],
            "epochs": cfg.epochs,
            "method": cfg.method,
            "model": cfg.model,
            "teacher": teacher,
            "dataset": self.bundle.spec,
            "params": sum(p.numel() for p in self.method.student.parameters()),
            "seconds": seconds,
            # the whole run's rate
            "images_per_s": sum(r["images_per_s"] * r["seconds"] for r in self.history) / seconds,
            "world_size": self.info.world_size,
            "device": str(self.device),
        }
        if self.info.is_main:
            # where the model started, and the shapes a pruned start keeps
            origin = {"weights": self.weights_source} if self.weights_source else {"init": cfg.init} if cfg.init else {}
            description = model_description(cfg.model, self.bundle, method=cfg.method, teacher=teacher, **origin,
                                             **self.init_shapes)
            save_model(self.out, self.method.student, description)
            write_json(self.out / "summary.json", summary)
            from edgekd.plots import plot_curves

            plot_curves(self.history, self.out / "curves.png", title=f"{cfg.method}: {cfg.model} on {self.bundle.name}")
        barrier(self.info)
        summary["wall_seconds"] = time.perf_counter() - started
        summary["out"] = str(self.out)
        return summary

    @contextlib.contextmanager
    def _scalars(self) -> Iterator[Callable[[dict[str, Any]], None]]:
        """A function that writes one epoch's row as TensorBoard scalars (``--tensorboard``), else does nothing."""
        if not (self.cfg.tensorboard and self.info.is_main):
            yield lambda row: None
            return
        from torch.utils.tensorboard import SummaryWriter

        # a resumed run drops the events of the epochs it redoes, as metrics.jsonl does
        writer = SummaryWriter(str(self.out / TENSORBOARD), purge_step=self.start_epoch + 1)

        def write(row: dict[str, Any]) -> None:
            step = row["epoch"]
            for name, value in row["losses"].items():
                writer.add_scalar(f"loss/{name}", value, step)
            for key, tag in (("train_acc", "accuracy/train"), ("val_acc", "accuracy/val"), ("lr", "lr"),
                             ("images_per_s", "images_per_s")):
                writer.add_scalar(tag, row[key], step)
            writer.flush()

        try:
            yield write
        finally:
            writer.close()

    def _progress(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        if not self.show_progress:
            return contextlib.nullcontext(None)
        return Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), transient=True,
        )

    def _train_epoch(self, epoch: int, progress) -> dict[str, Any]:
        cfg, device = self.cfg, self.device
        # the epoch's randomness depends only on (seed, epoch, rank): resuming reproduces it exactly
        torch.manual_seed(cfg.seed * 1_000_003 + epoch * 7919 + self.info.rank)
        sampler = self.train_loader.sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        elif self.train_loader.generator is not None:
            self.train_loader.generator.manual_seed(cfg.seed + epoch)
        self.method.on_epoch_start(epoch)
        self.engine.train()
        accumulate = cfg.accumulate
        steps = len(self.train_loader) // accumulate  # optimizer steps; a last incomplete group is dropped
        task = (progress.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=steps, stats="")
                if progress is not None else None)
        loss_sums: dict[str, float] = {}
        correct = seen = 0
        start = time.perf_counter()
        batches = iter(self.train_loader)
        for i in range(steps):
            lr = cfg.lr * lr_factor(cfg, epoch + i / steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.zero_grad(set_to_none=True)
            for k in range(accumulate):
                x, y = next(batches)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                # DDP averages gradients across processes only on the last micro-batch of the step
                last = k == accumulate - 1
                with contextlib.nullcontext() if last or self.engine is self.method else self.engine.no_sync():
                    with torch.autocast(device.type, dtype=self.amp_dtype or torch.float32,
                                        enabled=self.amp_dtype is not None):
                        logits, losses = self.engine(x, y, epoch)
                        loss = sum(losses.values())
                    if not torch.isfinite(loss):
                        kept = (
                            f"The last good checkpoint ({self.out / CHECKPOINT}, epoch {epoch}) is intact."
                            if epoch > 0 else "Nothing was saved: it happened in the first epoch."
                        )
                        raise EdgeKDError(
                            f"the loss became {loss.item()} at epoch {epoch + 1}, step {i + 1}: training diverged; "
                            f"lower --lr or check the data. {kept}"
                        )
                    # each micro-batch's loss is a mean over its images: 1/K of it makes the step's gradient the mean
                    # over the whole global batch, as one batch of that size would give
                    self.scaler.scale(loss / accumulate).backward()
                n = y.shape[0]
                for name, value in losses.items():
                    loss_sums[name] = loss_sums.get(name, 0.0) + value.item() * n
                correct += (logits.argmax(1) == y).sum().item()
                seen += n
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.scaler.get_scale() >= scale:  # fp16 skips a step with inf/nan gradients (and lowers the scale)
                self.method.on_step_end()
            if task is not None:
                rate = seen / (time.perf_counter() - start)
                progress.update(task, advance=1,
                                stats=f"loss {loss.item():.3f}  acc {correct / seen:.3f}  {rate:,.0f} img/s")
        seconds = time.perf_counter() - start
        names = sorted(loss_sums)
        totals = all_reduce_sum([loss_sums[k] for k in names] + [correct, seen, seconds], device, self.info)
        seen_all = totals[-2]
        if task is not None:
            progress.remove_task(task)
        return {
            "epoch": epoch + 1,
            "losses": {k: totals[j] / seen_all for j, k in enumerate(names)},
            "train_acc": totals[-3] / seen_all,
            "lr": lr,
            "seconds": seconds,
            "images_per_s": seen_all / seconds,
        }

    @torch.no_grad()
    def _evaluate(self) -> float:
        self.method.eval()
        correct = total = 0
        for x, y in self.val_loader:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                enabled=self.amp_dtype is not None):
                logits = self.method.student(x)
            correct += (logits.argmax(1) == y).sum().item()
            total += y.shape[0]
        correct, total = all_reduce_sum([correct, total], self.device, self.info)
        return correct / total


def _epoch_line(row: dict[str, Any], epochs: int) -> str:
    losses = "  ".join(f"{k} {v:.3f}" for k, v in row["losses"].items())
    return (
        f"epoch {row['epoch']:>3}/{epochs}  {losses}  train {row['train_acc']:.3f}  val {row['val_acc']:.3f}  "
        f"lr {row['lr']:.4f}  {row['images_per_s']:,.0f} img/s"
    )


def write_json_lines(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite ``metrics.jsonl`` whole, so a resumed run never keeps lines of epochs it redoes."""
    from edgekd.fsutil import write_text

    write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def run_training(cfg: TrainConfig, *, show_progress: bool = True) -> dict[str, Any]:
    """Train or distil as ``cfg`` says and return the run's summary (also written to ``summary.json``)."""
    device = resolve_device(cfg.device)
    info = init_from_env(device.type)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        return _Run(cfg, device, info, show_progress).fit()
    finally:
        shutdown()
