"""What a training run does besides training, one callback each: the method's hooks, checkpoint and resume, the
run dir, clean-up after an early failure, ``metrics.jsonl``, TensorBoard and the progress bar.

A callback overrides the events it needs; each receives the ``Trainer`` and reads its state (``epoch``, ``row``,
``history``, ``summary``, ``parts``). ``default_callbacks`` is what every ``edgekd train``/``distill`` run has.
"""

from __future__ import annotations

import json
import pickle
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from edgekd.config import save_config
from edgekd.contracts.rundir import CHECKPOINT, CONFIG, CURVES, METRICS, SUMMARY, TENSORBOARD
from edgekd.errors import EdgeKDError
from edgekd.fsutil import atomic_path, make_dir, remove_empty, write_json, write_text

if TYPE_CHECKING:
    from edgekd.engine.parts import Parts
    from edgekd.engine.trainer import Trainer


class Callback:
    """The events of ``Trainer.fit``, in the order they fire; each does nothing unless overridden."""

    def on_fit_start(self, trainer: Trainer) -> None: ...
    def on_epoch_start(self, trainer: Trainer) -> None: ...
    def on_step_end(self, trainer: Trainer) -> None: ...
    def on_epoch_end(self, trainer: Trainer) -> None: ...
    def on_fit_end(self, trainer: Trainer) -> None: ...
    def on_exception(self, trainer: Trainer) -> None: ...


class MethodEvents(Callback):
    """The method's own hooks (a DR-KD snapshot at an epoch's start, an EMA teacher after each optimizer step)."""

    def on_epoch_start(self, trainer: Trainer) -> None:
        trainer.parts.method.on_epoch_start(trainer.epoch)

    def on_step_end(self, trainer: Trainer) -> None:
        if trainer.step_taken:
            trainer.parts.method.on_step_end()


class Checkpoint(Callback):
    """``checkpoint.pt`` after every epoch (atomically, by the main process), and ``--resume`` from it."""

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.cfg.resume:
            self._load(trainer)

    def on_epoch_end(self, trainer: Trainer) -> None:
        p = trainer.parts
        if not p.info.is_main:
            return
        state = {"epoch": trainer.epoch + 1, "student": p.method.student.state_dict(),
                 "method": p.method.resume_state(), "optimizer": p.optimizer.state_dict(),
                 "scaler": p.scaler.state_dict(), "best_acc": trainer.best_acc, "history": trainer.history}
        with atomic_path(p.out / CHECKPOINT) as tmp:
            torch.save(state, tmp)

    @staticmethod
    def _load(trainer: Trainer) -> None:
        from edgekd.models.checkpoint import load_problem

        p, path = trainer.parts, trainer.parts.out / CHECKPOINT
        try:
            state = torch.load(path, map_location=p.device, weights_only=True)
            p.method.student.load_state_dict(state["student"])
            p.method.load_resume_state(state.get("method", {}))
            p.optimizer.load_state_dict(state["optimizer"])
            p.scaler.load_state_dict(state["scaler"])
            trainer.start_epoch, trainer.best_acc = int(state["epoch"]), float(state["best_acc"])
            trainer.history = list(state["history"])
        except (RuntimeError, KeyError, EOFError, ValueError, TypeError, OSError, pickle.UnpicklingError) as e:
            what = f"no {e}" if isinstance(e, KeyError) else load_problem(e)
            raise EdgeKDError(
                f"{path} cannot be resumed ({what}); it is corrupt, or from another model or config (resume with the "
                f"run's own settings: -c {p.out / CONFIG})"
            ) from None


class CleanupOnFailure(Callback):
    """A run that fails before its first checkpoint leaves nothing behind: the folders it made are removed again,
    while a run with a checkpoint is kept to resume. Also a context manager, for work around a run (prune, then
    recover)."""

    def __init__(self, out: Path) -> None:
        self.out, self.created = Path(out), []

    def on_fit_start(self, trainer: Trainer) -> None:
        self.created = make_dir(self.out)

    def on_exception(self, trainer: Trainer) -> None:
        self.clean()

    def clean(self) -> None:
        if self.created and not (self.out / CHECKPOINT).exists():
            shutil.rmtree(self.out, ignore_errors=True)
            remove_empty(self.created[1:])

    def __enter__(self) -> CleanupOnFailure:
        self.created = make_dir(self.out)
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: Any) -> None:
        if kind is not None:
            self.clean()


class RunDirWriter(Callback):
    """The run dir contract (``edgekd.contracts.rundir``): ``config.yaml`` first, then the model, its description,
    ``summary.json`` and the curves when the run ends."""

    def on_fit_start(self, trainer: Trainer) -> None:
        save_config(trainer.cfg, trainer.parts.out / CONFIG)

    def on_fit_end(self, trainer: Trainer) -> None:
        from edgekd.plots import plot_curves
        from edgekd.rundir import model_description, save_model

        p, cfg = trainer.parts, trainer.cfg
        description = model_description(cfg.model, p.bundle, method=cfg.method, teacher=p.teacher_label, **p.origin)
        save_model(p.out, p.method.student, description)
        write_json(p.out / SUMMARY, trainer.summary)
        plot_curves(trainer.history, p.out / CURVES, title=f"{cfg.method}: {cfg.model} on {p.bundle.name}")


class MetricsLog(Callback):
    """``metrics.jsonl`` rewritten whole after every epoch, so a resumed run never keeps lines of epochs it redoes."""

    def on_epoch_end(self, trainer: Trainer) -> None:
        write_text(trainer.parts.out / METRICS, "".join(json.dumps(r) + "\n" for r in trainer.history))


class TensorBoard(Callback):
    """Each epoch's losses, accuracies, learning rate and speed as TensorBoard scalars (``--tensorboard``)."""

    TAGS = (("train_acc", "accuracy/train"), ("val_acc", "accuracy/val"), ("lr", "lr"),
            ("images_per_s", "images_per_s"))

    def __init__(self) -> None:
        self.writer = None

    def on_fit_start(self, trainer: Trainer) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # a resumed run drops the events of the epochs it redoes, as metrics.jsonl does
        self.writer = SummaryWriter(str(trainer.parts.out / TENSORBOARD), purge_step=trainer.start_epoch + 1)

    def on_epoch_end(self, trainer: Trainer) -> None:
        row, step = trainer.row, trainer.row["epoch"]
        for name, value in row["losses"].items():
            self.writer.add_scalar(f"loss/{name}", value, step)
        for key, tag in self.TAGS:
            self.writer.add_scalar(tag, row[key], step)
        self.writer.flush()

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.writer is not None:
            self.writer.close()

    on_exception = on_fit_end


class ProgressBar(Callback):
    """A bar per epoch with the running loss, accuracy and speed, and a line per finished epoch on stdout (plain
    text, so piped output is not wrapped)."""

    def __init__(self) -> None:
        self.bar, self.task = None, None

    def on_fit_start(self, trainer: Trainer) -> None:
        from edgekd.progress import progress_bar

        self.bar = progress_bar(stats=True, transient=True)
        self.bar.start()

    def on_epoch_start(self, trainer: Trainer) -> None:
        self.task = self.bar.add_task(f"epoch {trainer.epoch + 1}/{trainer.cfg.epochs}", total=trainer.steps,
                                      stats="")

    def on_step_end(self, trainer: Trainer) -> None:
        rate = trainer.seen / (time.perf_counter() - trainer.epoch_started)
        self.bar.update(self.task, advance=1, stats=f"loss {trainer.loss:.3f}  acc {trainer.correct / trainer.seen:.3f}"
                                                    f"  {rate:,.0f} img/s")

    def on_epoch_end(self, trainer: Trainer) -> None:
        self.bar.remove_task(self.task)
        print(epoch_line(trainer.row, trainer.cfg.epochs), flush=True)

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.stop()

    on_exception = on_fit_end


def epoch_line(row: dict[str, Any], epochs: int) -> str:
    losses = "  ".join(f"{k} {v:.3f}" for k, v in row["losses"].items())
    return (f"epoch {row['epoch']:>3}/{epochs}  {losses}  train {row['train_acc']:.3f}  val {row['val_acc']:.3f}  "
            f"lr {row['lr']:.4f}  {row['images_per_s']:,.0f} img/s")


def default_callbacks(parts: Parts, show_progress: bool) -> list[Callback]:
    """Every run resumes and checkpoints; the main process also owns the run dir, its metrics, TensorBoard (with
    ``--tensorboard``) and the progress bar."""
    callbacks: list[Callback] = [Checkpoint()]
    if parts.info.is_main:
        callbacks += [CleanupOnFailure(parts.out), RunDirWriter(), MetricsLog()]
        callbacks += [TensorBoard()] if parts.cfg.tensorboard else []
        callbacks += [ProgressBar()] if show_progress else []
    return callbacks
