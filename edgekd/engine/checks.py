"""The checks and small pieces a training run needs before anything is built: the device, the run dir, the global
batch's split over processes, the teacher; ``preflight`` runs the ones that need no data, once, before ``--nproc``
launches its processes."""

from __future__ import annotations

import os
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgekd.config import TrainConfig
from edgekd.contracts.rundir import (
    CHECKPOINT,
    CONFIG,
    CURVES,
    DESCRIPTION,
    FIT,
    FIT_EXPORT,
    FIT_STUDENTS,
    METRICS,
    PRUNED,
    SUMMARY,
    TEACHER,
    TENSORBOARD,
    WEIGHTS,
)
from edgekd.errors import EdgeKDError
from edgekd.fsutil import check_can_create

# what a run writes before its first checkpoint; a folder holding only these is a run that stopped early (its
# self-trained teacher is kept and reused; `prune --recover-epochs` puts its pruned start beside), anything else
# in --out belongs to someone else
RUN_ENTRIES = {CONFIG, METRICS, TEACHER, PRUNED, CURVES, SUMMARY, DESCRIPTION, TENSORBOARD, FIT, FIT_EXPORT,
               FIT_STUDENTS}


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise EdgeKDError("--device cuda was asked for, but no CUDA GPU is visible; use --device auto or cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def default_out(cfg: TrainConfig) -> Path:
    data = cfg.data.split(":")[0]
    return Path("runs") / f"{cfg.method}-{cfg.model}-{data}-s{cfg.seed}"


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
    if not resume and (ckpt.exists() or (out / WEIGHTS).exists()):
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
