"""Prune, then recover: `edgekd prune --recover-epochs N` as one training run.

The pruned model (``edgekd.prune``) goes to ``OUT/pruned``; ``OUT`` is then an ordinary training run started from
it (``--init``) that distils it from the unpruned model, so it resumes, shows progress and reports like any run.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from edgekd.config import RECOVERY_LR, load_config
from edgekd.contracts.rundir import read_description
from edgekd.errors import EdgeKDError
from edgekd.fsutil import make_dir, remove_empty, write_json
from edgekd.prune import CHANNEL_MULTIPLE, prune_into
from edgekd.train import CHECKPOINT, check_run_dir, run_training

RECOVERY_DEFAULTS = {"method": "kd", "lr": RECOVERY_LR, "warmup_epochs": 0}


def prune_and_recover(
    run_dir: str | Path,
    out_dir: str | Path,
    recover: dict[str, Any],
    ratio: float = 0.1,
    method: str = "structured",
    *,
    target_macs: float | None = None,
    channel_multiple: int | None = CHANNEL_MULTIPLE,
    batch_size: int = 256,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Prune ``run_dir``'s model as ``edgekd.prune.prune_run`` does, into ``OUT/pruned``, then distil it from the
    unpruned model into ``OUT`` with the training settings ``recover`` (at least ``epochs``; ``method`` kd, lr
    ``RECOVERY_LR`` unless given). ``OUT/summary.json`` adds how it was pruned (``pruning``), the MACs and
    parameters before and after, and the held-out accuracy before pruning, after it and after recovery
    (``acc_before``, ``acc_pruned``, ``acc_recovered``).
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    desc = read_description(run_dir)
    check_run_dir(out_dir, resume=False)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise EdgeKDError(f"{out_dir} already exists and is not empty; choose another --out or remove it")
    settings = {**RECOVERY_DEFAULTS, **recover}
    overrides = {  # the unpruned run's data at its size; the pruned model starts, the unpruned one teaches
        "data": desc["dataset"], "data_options": desc.get("dataset_options") or {},
        "image_size": desc["input_size"][-1],
        "teacher": str(run_dir), "init": str(out_dir / "pruned"), "out": str(out_dir), **settings,
    }
    load_config(None, {**overrides, "init": None})  # bad recovery settings are one line before minutes of pruning
    created = make_dir(out_dir)
    try:
        pruned = prune_into(run_dir, out_dir / "pruned", ratio, method, target_macs, channel_multiple, batch_size)
        summary = run_training(load_config(None, overrides), show_progress=show_progress)
    except BaseException:
        if not (out_dir / CHECKPOINT).exists():  # nothing to resume: leave no half-made run behind
            shutil.rmtree(out_dir, ignore_errors=True)
            remove_empty(created[1:])
        raise
    how = {k: pruned[k] for k in ("ratio", "target_macs", "method", "channel_multiple", "source") if k in pruned}
    sizes = {k: pruned[k] for k in ("macs_before", "macs_after", "params_before", "params_after", "acc_before")}
    result = {**summary, "pruning": how, **sizes, "acc_pruned": pruned["acc_after"],
              "acc_recovered": summary["final_acc"]}
    write_json(out_dir / "summary.json", {k: v for k, v in result.items() if k not in ("wall_seconds", "out")})
    return result
