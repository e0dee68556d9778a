"""Prune, then recover: `edgekd prune --recover-epochs N` as one training run.

The pruned model (``edgekd.prune``) goes to ``OUT/pruned``; ``OUT`` is then an ordinary training run started from
it (``--init``) that distils it from the unpruned model, so it resumes, shows progress and reports like any run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekd.config import load_config
from edgekd.contracts.rundir import PRUNED, read_description
from edgekd.errors import EdgeKDError
from edgekd.fsutil import write_json
from edgekd.registries import METHODS
from edgekd.settings import PRUNE, PRUNE_METHODS

RECOVERY_DEFAULTS = {"method": PRUNE.recover_method, "lr": PRUNE.lr, "warmup_epochs": 0}


def taught_by(run_dir: Path, desc: dict[str, Any], out_dir: Path, settings: dict[str, Any]) -> dict:
    """The training config of a run into ``out_dir`` that ``run_dir``'s model teaches on its data at its size
    (``desc``: its model.json); ``settings`` on top."""
    return {"data": desc["dataset"], "data_options": desc.get("dataset_options") or {},
            "image_size": desc["input_size"][-1], "teacher": str(run_dir), "out": str(out_dir), **settings}


def recovery_overrides(run_dir: Path, desc: dict[str, Any], out_dir: Path, settings: dict[str, Any]) -> dict:
    """The training config of a recovery into ``out_dir`` (`prune --recover-epochs`, `fit`): the unpruned run
    teaches, and the pruned model in ``out_dir/pruned`` starts."""
    return taught_by(run_dir, desc, out_dir, {"init": str(out_dir / PRUNED), **settings})


def prune_and_recover(
    run_dir: str | Path,
    out_dir: str | Path,
    recover: dict[str, Any],
    ratio: float = PRUNE.ratio,
    method: str = "structured",
    *,
    target_macs: float | None = None,
    channel_multiple: int | None = PRUNE.channel_multiple,
    batch_size: int = 256,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Prune ``run_dir``'s model as ``edgekd.prune.prune_run`` does, into ``OUT/pruned``, then distil it from the
    unpruned model into ``OUT`` with the training settings ``recover`` (at least ``epochs``; ``method`` kd, lr
    ``PRUNE.lr`` unless given). ``OUT/summary.json`` adds how it was pruned (``pruning``), the MACs and
    parameters before and after, and the held-out accuracy before pruning, after it and after recovery
    (``acc_before``, ``acc_pruned``, ``acc_recovered``).
    """
    from edgekd.engine import CleanupOnFailure
    from edgekd.engine.checks import check_run_dir
    from edgekd.prune import prune_into
    from edgekd.train import run_training

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    desc = read_description(run_dir)
    check_run_dir(out_dir, resume=False)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise EdgeKDError(f"{out_dir} already exists and is not empty; choose another --out or remove it")
    settings = {**RECOVERY_DEFAULTS, **recover}
    overrides = recovery_overrides(run_dir, desc, out_dir, settings)
    load_config(None, {**overrides, "init": None})  # bad recovery settings are one line before minutes of pruning
    with CleanupOnFailure(out_dir):  # nothing to resume: leave no half-made run behind
        pruned = prune_into(run_dir, out_dir / PRUNED, ratio, method, target_macs, channel_multiple, batch_size)
        summary = run_training(load_config(None, overrides), show_progress=show_progress)
    how = {k: pruned[k] for k in ("ratio", "target_macs", "method", "channel_multiple", "source") if k in pruned}
    sizes = {k: pruned[k] for k in ("macs_before", "macs_after", "params_before", "params_after", "acc_before")}
    result = {**summary, "pruning": how, **sizes, "acc_pruned": pruned["acc_after"],
              "acc_recovered": summary["final_acc"]}
    write_json(out_dir / "summary.json", {k: v for k, v in result.items() if k not in ("wall_seconds", "out")})
    return result


def prune(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    ratio: float | None = None,
    target_macs: float | None = None,
    prune_method: str = PRUNE.prune_method,
    channel_multiple: int = PRUNE.channel_multiple,
    recover_epochs: int = PRUNE.recover_epochs,
    recover_method: str = PRUNE.recover_method,
    recover_args: dict[str, Any] | None = None,
    lr: float = PRUNE.lr,
    show_progress: bool = True,
    **training: Any,
) -> dict[str, Any]:
    """`edgekd prune` and ``Run.prune``: the one place their defaults and checks live.

    Prunes by ``ratio`` (default ``PRUNE.ratio``) or to ``target_macs`` of the MACs, then with ``recover_epochs`` > 0
    distils the pruned model from the unpruned one (``prune_and_recover``; ``training``: batch_size, seed, device,
    workers). Returns the numbers ``prune_run`` or ``prune_and_recover`` return.
    """
    if recover_method in PRUNE_METHODS:
        raise EdgeKDError(f"--method names the recovery method now; pass --prune-method {recover_method}")
    if ratio is not None and target_macs is not None:
        raise EdgeKDError("pass either --ratio or --target-macs, not both")
    if ratio is not None and not 0.0 < ratio < 1.0:
        raise EdgeKDError(f"--ratio must be between 0 and 1, got {ratio}")
    if recover_epochs < 0:
        raise EdgeKDError(f"--recover-epochs must be >= 0, got {recover_epochs}")
    if channel_multiple < 1:
        raise EdgeKDError(f"--channel-multiple must be >= 1, got {channel_multiple}")
    read_description(Path(run_dir))  # the checks that need no torch answer first: a wrong run dir, a mistyped name
    if recover_epochs:
        METHODS.check(recover_method)
    from edgekd.prune import prune_run

    how = {"ratio": PRUNE.ratio if ratio is None and target_macs is None else ratio or 0.0, "method": prune_method,
           "target_macs": target_macs, "channel_multiple": channel_multiple}
    if not recover_epochs:
        return prune_run(run_dir, out_dir, **how)
    recover = {"epochs": recover_epochs, "method": recover_method, "method_args": recover_args or {}, "lr": lr,
               **{k: v for k, v in training.items() if v is not None}}
    return prune_and_recover(run_dir, out_dir, recover, **how, show_progress=show_progress)
