"""The training engine (docs/design.md §6): ``build_parts`` assembles a run from its config, ``Trainer.fit`` runs the
loop and fires events, callbacks do everything else (checkpoints, metrics, TensorBoard, progress, the run dir,
clean-up)."""

from edgekd.engine.callbacks import Callback, CleanupOnFailure, default_callbacks
from edgekd.engine.parts import Parts, build_parts
from edgekd.engine.run import fit_run
from edgekd.engine.trainer import Trainer, lr_factor

__all__ = ["Callback", "CleanupOnFailure", "Parts", "Trainer", "build_parts", "default_callbacks", "fit_run",
           "lr_factor"]
