"""The run dir contract (docs/design.md §2): its file names and the reader of ``model.json``.

``model.json`` carries everything needed to rebuild the network and feed it without the training code's state:
architecture name, classes, input size, the preprocessing spec, the dataset spec and, for pruned models, the shape
of every resized layer. Building the network from it is the training side's ``edgekd.rundir``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgekd.contracts.preprocessing import PreprocessSpec
from edgekd.contracts.values import is_count, is_number_list
from edgekd.errors import EdgeKDError

WEIGHTS = "model.safetensors"
DESCRIPTION = "model.json"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINT = "checkpoint.pt"
CURVES = "curves.png"
TENSORBOARD = "tensorboard"  # --tensorboard's event files
TEACHER = "teacher"  # the self-teacher a self-distillation run trains first
PRUNED = "pruned"  # prune --recover-epochs and fit: the pruned model the run recovers from
FIT = "fit.json"  # edgekd fit: the search's every step, measured (and its state, for --resume)
FIT_EXPORT = "export"  # edgekd fit: the export dir of the fitted model
FIT_STUDENTS = "students"  # edgekd fit --students: a run dir per student distilled to choose among them
REQUIRED = ("arch", "num_classes", "input_size", "mean", "std", "class_names", "dataset")


def read_description(run_dir: str | Path) -> dict[str, Any]:
    """``model.json`` of a run dir, checked: later stages build models and exports from its values."""
    run_dir = Path(run_dir)
    path = run_dir / DESCRIPTION
    if not run_dir.is_dir():
        raise EdgeKDError(
            f"run dir {run_dir} does not exist; pass the --out folder of `edgekd train` or `edgekd distill`")
    if not path.is_file() or not (run_dir / WEIGHTS).is_file():
        raise EdgeKDError(f"{run_dir} is not an edgekd run dir: it needs {WEIGHTS} and {DESCRIPTION}")
    try:
        desc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EdgeKDError(f"{path} is not valid JSON ({e}); the run dir is corrupt") from None
    if not isinstance(desc, dict):
        raise EdgeKDError(f"{path} must hold a JSON object; the run dir is corrupt")
    missing = [k for k in REQUIRED if k not in desc]
    if missing:
        raise EdgeKDError(f"{path} lacks {', '.join(missing)}; the run dir is corrupt")
    problem = _description_problem(desc)
    if problem:
        raise EdgeKDError(f"{path}: {problem}; the run dir is corrupt")
    description_preprocessing(desc, where=f"{path} preprocessing")
    return desc


def description_preprocessing(desc: dict[str, Any], where: str = f"{DESCRIPTION} preprocessing") -> PreprocessSpec:
    """The model's preprocessing spec; a ``model.json`` written before the spec existed means exact resize."""
    spec = desc.get("preprocessing") or {
        "resize": list(desc["input_size"][1:]), "mean": desc["mean"], "std": desc["std"],
    }
    return PreprocessSpec.from_dict(spec, where=where, fix="the run dir is corrupt")


def _description_problem(desc: dict[str, Any]) -> str | None:
    """What is wrong with a ``model.json``'s values, if anything."""
    size, classes = desc["input_size"], desc["num_classes"]
    if not isinstance(desc["arch"], str) or not desc["arch"]:
        return f"arch must be a model name, got {desc['arch']!r}"
    if not is_count(classes):
        return f"num_classes must be a positive integer, got {classes!r}"
    if not isinstance(size, list) or len(size) != 3 or not all(is_count(v) for v in size) or size[0] != 3:
        return f"input_size must be [3, height, width] with positive sizes, got {size!r}"
    if not is_number_list(desc["mean"], 3) or not is_number_list(desc["std"], 3) or min(desc["std"]) <= 0:
        return f"mean and std must be 3 finite numbers, std > 0, got {desc['mean']!r} and {desc['std']!r}"
    names = desc["class_names"]
    if not isinstance(names, list) or len(names) != classes or not all(isinstance(n, str) for n in names):
        return f"class_names must be {classes} strings (num_classes), got {str(names)[:80]}"
    if not isinstance(desc["dataset"], str) or not isinstance(desc.get("dataset_options", {}), dict):
        return "dataset must be a dataset spec and dataset_options an object"
    if not isinstance(desc.get("layer_shapes", {}), dict):
        return "layer_shapes must be an object of layer name -> shape"
    return None
