"""The training loop: epochs of optimizer steps and a held-out evaluation, with every side effect (checkpoints,
metrics, TensorBoard, progress, the run dir, clean-up, the method's own hooks) left to callbacks fired at its
events. The random state is re-derived from (seed, epoch, rank) at each epoch, so a resumed CPU run reproduces an
uninterrupted one exactly."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from edgekd.config import TrainConfig
from edgekd.contracts.rundir import CHECKPOINT
from edgekd.distributed import all_reduce_sum, barrier
from edgekd.engine.callbacks import Callback, MethodEvents
from edgekd.errors import EdgeKDError

if TYPE_CHECKING:
    from edgekd.engine.parts import Parts


def lr_factor(cfg: TrainConfig, progress_epochs: float) -> float:
    """Learning-rate multiplier at a fractional epoch: linear warm-up, then cosine or step decay."""
    if cfg.warmup_epochs and progress_epochs < cfg.warmup_epochs:
        return (progress_epochs + 1e-8) / cfg.warmup_epochs
    if cfg.schedule == "cosine":
        span = max(cfg.epochs - cfg.warmup_epochs, 1e-8)
        return 0.5 * (1.0 + math.cos(math.pi * (progress_epochs - cfg.warmup_epochs) / span))
    milestones = cfg.milestones or [round(cfg.epochs * f) for f in (0.625, 0.75, 0.875)]
    return cfg.lr_decay ** sum(progress_epochs >= m for m in milestones)


class Trainer:
    """Runs ``parts`` for ``cfg.epochs`` epochs, firing ``on_fit_start``, ``on_epoch_start``, ``on_step_end``,
    ``on_epoch_end``, ``on_fit_end`` and ``on_exception`` on each callback in order (the method's own hooks first).

    Callbacks read and set the state below: ``epoch``, ``step`` of ``steps``, ``step_taken`` (fp16 skips a step with
    inf/nan gradients), ``loss``, ``correct``/``seen`` and ``epoch_started`` (its first step's clock) of the running
    epoch, ``row`` of the finished one,
    ``history``, ``best_acc``, ``start_epoch`` (a resumed run's), and ``summary`` at the end.
    """

    def __init__(self, parts: Parts, callbacks: Sequence[Callback] = ()) -> None:
        self.parts, self.cfg = parts, parts.cfg
        self.callbacks: list[Callback] = [MethodEvents(), *callbacks]
        self.start_epoch, self.best_acc, self.history = 0, 0.0, []
        self.epoch = self.step = self.steps = self.correct = self.seen = 0
        self.step_taken, self.loss, self.started, self.epoch_started = True, 0.0, 0.0, 0.0
        self.row: dict[str, Any] = {}
        self.summary: dict[str, Any] = {}

    def fire(self, event: str) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(self)

    def fit(self) -> dict[str, Any]:
        """Train, evaluate every epoch, and return the run's summary (``summary.json``'s fields, ``out`` and
        ``wall_seconds``)."""
        self.started = time.perf_counter()
        try:
            self.fire("on_fit_start")
            for epoch in range(self.start_epoch, self.cfg.epochs):
                self.epoch = epoch
                self.row = self.train_epoch(epoch)
                self.row["val_acc"] = self.evaluate()
                self.best_acc = max(self.best_acc, self.row["val_acc"])
                self.history.append(self.row)
                self.fire("on_epoch_end")
            self.summary = self._summary()
            self.fire("on_fit_end")
        except BaseException:
            self.fire("on_exception")
            raise
        barrier(self.parts.info)
        return {**self.summary, "wall_seconds": time.perf_counter() - self.started, "out": str(self.parts.out)}

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One epoch of optimizer steps (a last group short of ``accumulate`` micro-batches is dropped); its row of
        ``metrics.jsonl`` without ``val_acc``."""
        p, cfg = self.parts, self.cfg
        torch.manual_seed(cfg.seed * 1_000_003 + epoch * 7919 + p.info.rank)
        sampler = p.train_loader.sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        elif p.train_loader.generator is not None:
            p.train_loader.generator.manual_seed(cfg.seed + epoch)
        self.steps, self.epoch = len(p.train_loader) // cfg.accumulate, epoch
        self.fire("on_epoch_start")
        p.model.train()
        loss_sums: dict[str, float] = {}
        self.correct = self.seen = 0
        self.epoch_started = time.perf_counter()
        batches = iter(p.train_loader)
        lr = cfg.lr
        for i in range(self.steps):
            self.step = i
            lr = cfg.lr * lr_factor(cfg, epoch + i / self.steps)
            for group in p.optimizer.param_groups:
                group["lr"] = lr
            p.optimizer.zero_grad(set_to_none=True)
            for k in range(cfg.accumulate):
                x, y = next(batches)
                losses = self._backward(x, y, last=k == cfg.accumulate - 1)
                n = y.shape[0]
                for name, value in losses.items():
                    loss_sums[name] = loss_sums.get(name, 0.0) + value.item() * n
            scale = p.scaler.get_scale()
            p.scaler.step(p.optimizer)
            p.scaler.update()
            self.step_taken = p.scaler.get_scale() >= scale
            self.fire("on_step_end")
        seconds = time.perf_counter() - self.epoch_started
        names = sorted(loss_sums)
        totals = all_reduce_sum([loss_sums[k] for k in names] + [self.correct, self.seen, seconds], p.device, p.info)
        seen = totals[-2]
        return {"epoch": epoch + 1, "losses": {k: totals[j] / seen for j, k in enumerate(names)},
                "train_acc": totals[-3] / seen, "lr": lr, "seconds": seconds, "images_per_s": seen / seconds}

    def _backward(self, x: torch.Tensor, y: torch.Tensor, last: bool) -> dict[str, torch.Tensor]:
        """Forward and backward of one micro-batch; DDP averages gradients across processes only on the ``last``
        micro-batch of a step."""
        p = self.parts
        x, y = x.to(p.device, non_blocking=True), y.to(p.device, non_blocking=True)
        if p.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with contextlib.nullcontext() if last or p.model is p.method else p.model.no_sync():
            with p.autocast():
                logits, losses = p.model(x, y, self.epoch)
                loss = sum(losses.values())
            if not torch.isfinite(loss):
                kept = (f"The last good checkpoint ({p.out / CHECKPOINT}, epoch {self.epoch}) is intact."
                        if self.epoch > 0 else "Nothing was saved: it happened in the first epoch.")
                raise EdgeKDError(f"the loss became {loss.item()} at epoch {self.epoch + 1}, step {self.step + 1}: "
                                  f"training diverged; lower --lr or check the data. {kept}")
            # each micro-batch's loss is a mean over its images: 1/K of it makes the step's gradient the mean over
            # the whole global batch, as one batch of that size would give
            p.scaler.scale(loss / self.cfg.accumulate).backward()
        self.loss = loss.item()
        self.correct += (logits.argmax(1) == y).sum().item()
        self.seen += y.shape[0]
        return losses

    @torch.no_grad()
    def evaluate(self) -> float:
        """Held-out top-1 accuracy of the student (exact under DDP: each rank scores a slice, the sums reduced)."""
        p = self.parts
        p.method.eval()
        correct = total = 0
        for x, y in p.val_loader:
            x, y = x.to(p.device, non_blocking=True), y.to(p.device, non_blocking=True)
            with p.autocast():
                logits = p.method.student(x)
            correct += (logits.argmax(1) == y).sum().item()
            total += y.shape[0]
        correct, total = all_reduce_sum([correct, total], p.device, p.info)
        return correct / total

    def _summary(self) -> dict[str, Any]:
        p, cfg = self.parts, self.cfg
        seconds = sum(r["seconds"] for r in self.history)
        return {
            "best_acc": self.best_acc,
            "final_acc": self.history[-1]["val_acc"],
            "epochs": cfg.epochs,
            "method": cfg.method,
            "model": cfg.model,
            "teacher": p.teacher_label,
            "dataset": p.bundle.spec,
            "params": sum(t.numel() for t in p.method.student.parameters()),
            "seconds": seconds,
            "images_per_s": sum(r["images_per_s"] * r["seconds"] for r in self.history) / seconds,  # the run's rate
            "world_size": p.info.world_size,
            "device": str(p.device),
        }
