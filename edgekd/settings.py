"""The defaults of every stage after training, one frozen dataclass per stage (training's are
``edgekd.config.TrainConfig``). ``edgekd prune``/``export``/``bench``/``serve``/``val``/``predict``, the Python API
and the library functions behind both take their defaults from here, and ``tests/test_defaults.py`` walks every
command to check that none differs. A recipe (``-c``) may hold a section per stage (``prune:``, ``export:``,
``bench:``, ``serve:``) beside training's keys. Torch-free, so the device side and ``--help`` read it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PRUNE_METHODS = ("structured", "l1-unstructured")


@dataclass(frozen=True)
class PruneSettings:
    """`edgekd prune`, ``Run.prune``, ``edgekd.recover.prune``."""

    ratio: float = 0.3  # the cut when neither a ratio nor a MACs target is given
    target_macs: float | None = None
    prune_method: str = "structured"
    # ORT's x86 kernels work on 8 FP32 channels at a time; on an AVX-512 VNNI Xeon its INT8 convolution with 8
    # output channels ran slower than with 16 (benchmarks/results/prune.md)
    channel_multiple: int = 16
    recover_epochs: int = 0
    recover_method: str = "kd"
    # recovery fine-tunes trained weights: 0.02 brought a half-width cut back better than 0.01 in 4 epochs
    # (benchmarks/results/prune-recovery.md)
    lr: float = 0.02


@dataclass(frozen=True)
class ExportSettings:
    """`edgekd export`, ``Run.export``, ``edgekd.export.export_run``."""

    int8: bool = False
    calib_samples: int = 300
    calib_method: str = "minmax"
    max_drop: float | None = 0.5  # top-1 points an INT8 artifact may lose on the held-out split
    fp16: bool = False
    qat_epochs: int = 0
    fp32_nodes: tuple[str, ...] = ()  # ONNX nodes the ONNX Runtime INT8 artifact keeps in FP32 (fit's speed choice)


@dataclass(frozen=True)
class BenchSettings:
    """`edgekd bench`, ``Export.bench``, ``edgekd.export.bench.run_bench``."""

    precisions: tuple[str, ...] = ("fp32", "int8")
    batches: tuple[int, ...] = (1,)
    warmup: int = 20
    iters: int | None = None
    seconds: float = 2.0
    ov_hint: str = "LATENCY"
    ov_streams: int | None = None


@dataclass(frozen=True)
class ServeSettings:
    """`edgekd serve`, ``Export.serve``, ``edgekd.serve.server.run_server`` and ``create_app``."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 8
    batch_timeout_ms: float = 0.0
    max_upload_mb: float = 10.0
    max_pixels: int = 25_000_000  # the decompression-bomb guard
    queue_size: int = 256
    header_timeout: float = 10.0
    body_timeout: float = 60.0  # a 10 MB upload at 2 Mbit/s takes 40 s
    max_header_kb: int = 64
    log_level: str = "info"
    access_log: bool = False


@dataclass(frozen=True)
class FitSettings:
    """`edgekd fit`, ``Run.fit``, ``edgekd.fit.fit``: what is measured, and how the search and recovery run."""

    metric: str = "p50"  # the latency percentile the budget bounds
    batch: int = 1
    threads: int | None = None  # the runtime's default
    runtime: str = "ort"
    precision: str = "int8"
    step: float = 0.1  # each search step cuts the measured latency by this fraction (NetAdapt's schedule, constant)
    finetune_steps: int = 20  # the short KD fine-tune that ranks a step's candidates (cost, not yet measured)
    recover_epochs: int = 6  # the final KD recovery of the chosen model from the unpruned one
    lr: float = 0.01  # the short fine-tunes and the recovery, as benchmarks/results/fit.md measured them
    batch_size: int = 64  # training images per step (fine-tune and recovery)
    channel_multiple: int = PruneSettings.channel_multiple
    seconds: float = 1.0  # timing per candidate, in interleaved rounds as `edgekd bench` times
    calib_samples: int = 64  # a candidate's INT8 calibration: its latency, not its accuracy, is measured
    students: tuple[str, ...] = ()  # other architectures to try first (none: the run's own model is fitted)
    student_epochs: int = 3  # the short KD schedule each student that can meet the budget is ranked after
    layer_precision: bool = False  # try each layer in FP32 before the final export (off until a benchmark shows it)
    compare_uniform: bool = True  # each step also times the --target-macs prune at its MACs, for the report


@dataclass(frozen=True)
class OfflineSettings:
    """`edgekd val` and `predict`, ``Export.val`` and ``Export.predict``."""

    batch: int = 64  # images per model call, as the exporter scores its artifacts


PRUNE, EXPORT, BENCH, SERVE, OFFLINE = PruneSettings(), ExportSettings(), BenchSettings(), ServeSettings(), \
    OfflineSettings()
FIT = FitSettings()


# the sections of a recipe (`-c`) that later stages read; its top-level keys are training's (TrainConfig)
SECTIONS: dict[str, type] = {"prune": PruneSettings, "export": ExportSettings, "bench": BenchSettings,
                             "serve": ServeSettings, "fit": FitSettings}


def read_recipe(path: str | Path) -> dict[str, Any]:
    """A YAML recipe as a mapping; a missing, binary or malformed file is a one-line error."""
    import yaml

    from edgekd.errors import EdgeKDError, one_line

    path = Path(path)
    if not path.is_file():
        raise EdgeKDError(f"config file {path} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise EdgeKDError(f"{path} is not a text file; pass a YAML recipe (see configs/)") from None
    except yaml.YAMLError as e:
        raise EdgeKDError(f"{path} is not valid YAML: {one_line(e, first_line=True)}") from None
    if not isinstance(loaded, dict):
        raise EdgeKDError(f"{path} must hold a mapping of config keys, not {type(loaded).__name__}")
    return loaded


def recipe_section(path: str | Path, section: str) -> dict[str, Any]:
    """The ``section`` (``prune``, ``export``, ``bench``, ``serve``) of a recipe, each key checked against that
    stage's settings: a known name, and a value of its default's type."""
    from edgekd.errors import EdgeKDError

    values = read_recipe(path).get(section) or {}
    if not isinstance(values, dict):
        raise EdgeKDError(f"{path}: {section} must be a mapping of {section} settings, not {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(SECTIONS[section])}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise EdgeKDError(f"{path}: unknown {section} key(s) {', '.join(unknown)}; valid: {', '.join(fields)}")
    return {key: _typed(path, section, key, value, fields[key]) for key, value in values.items()}


def _typed(path: str | Path, section: str, key: str, value: Any, field: dataclasses.Field) -> Any:
    from edgekd.errors import EdgeKDError

    annotation = str(field.type)
    kind = annotation.split("|")[0].strip().split("[")[0]
    if value is None and "None" in annotation:
        return None
    if kind == "tuple" and isinstance(value, list):
        element = {"str": str, "int": int}[annotation.split("[")[1].split(",")[0]]
        if all(isinstance(v, element) and not isinstance(v, bool) for v in value):
            return tuple(value)
    elif kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif isinstance(value, {"int": int, "str": str, "bool": bool}.get(kind, ())) and (
            kind == "bool" or not isinstance(value, bool)):
        return value
    raise EdgeKDError(f"{path}: {section}.{key} must be {annotation}, got {value!r}")


def with_recipe(options: dict[str, Any], config: str | Path | None, section: str,
                given: set[str]) -> dict[str, Any]:
    """``options`` (named as the settings fields) with a recipe's ``section`` filling every one not ``given`` on the
    command line: flags win over the recipe, the recipe over the defaults."""
    if config is None:
        return options
    return {**options, **{k: v for k, v in recipe_section(config, section).items() if k not in given}}


def given_options(ctx: Any, renamed: dict[str, str] | None = None) -> set[str]:
    """The names (as the settings fields, through ``renamed``) of the options a click context got from the command
    line or the environment, not from their defaults."""
    explicit = ("COMMANDLINE", "ENVIRONMENT")  # by name: typer may carry its own copy of click's enum
    return {(renamed or {}).get(n, n) for n in ctx.params if ctx.get_parameter_source(n).name in explicit}
