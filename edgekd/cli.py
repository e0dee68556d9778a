"""The `edgekd` command line. Each command imports what it needs when it runs, so the device-side
commands (`bench`, `serve`, `val`, `predict`) start without torch installed."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from edgekd.config import TrainConfig
from edgekd.contracts.manifest import PRECISIONS
from edgekd.contracts.values import csv_list, int_list
from edgekd.errors import RANK_ERRORS_ENV, EdgeKDError, hand_to_launcher
from edgekd.export import bench as bench_options
from edgekd.export.formats import FORMATS
from edgekd.runtimes import artifact_runtimes
from edgekd.serve.command import PrecisionOpt, RuntimeOpt, ThreadsOpt
from edgekd.serve.command import serve as serve_command
from edgekd.settings import EXPORT, FIT, OFFLINE, PRUNE, given_options, with_recipe

app = typer.Typer(
    help="Distil a small vision model (DR-KD, R2KD, ...), export it to INT8 ONNX/OpenVINO, benchmark it, serve it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()

StageConfigOpt = typer.Option(
    None, "--config", "-c", help="YAML recipe whose section for this command (prune:, export:, bench:, serve:) sets "
                                 "its options; flags override it.")

# ------------------------------------------------------------------ options shared by train and distill
_D = TrainConfig()  # the defaults the help texts quote
ConfigOpt = typer.Option(None, "--config", "-c", help="YAML recipe (see configs/); flags override its keys.",
    rich_help_panel="Data and model")
DataOpt = typer.Option(
    None, help=f"Dataset, e.g. digits (embedded), cifar100:ROOT or imagefolder:PATH (`edgekd datasets` lists them "
               f"and the files each reads; default {_D.data}).", rich_help_panel="Data and model")
EpochsOpt = typer.Option(None, help=f"Training epochs (default {_D.epochs}).", rich_help_panel="Optimization")
BatchOpt = typer.Option(
    None, "--batch-size", "-b",
    help="Global batch per optimizer step, split evenly over the processes and --accumulate steps "
         f"(default {_D.batch_size}).", rich_help_panel="Optimization")
AccumulateOpt = typer.Option(
    None, help="Gradient accumulation: micro-batches per optimizer step in each process, for a global batch that does "
               f"not fit at once (default {_D.accumulate}).", rich_help_panel="Optimization")
LrOpt = typer.Option(None, help=f"Peak learning rate (default {_D.lr}).", rich_help_panel="Optimization")
OptimOpt = typer.Option(None, help="sgd (momentum, default) or adamw.", rich_help_panel="Optimization")
ScheduleOpt = typer.Option(None, help="cosine (default) or multistep (decay by lr_decay at --milestones).",
    rich_help_panel="Optimization")
MilestonesOpt = typer.Option(
    None, help="Epochs where multistep decays the lr, comma-separated (e.g. 150,180,210); '' for 62.5/75/87.5% of "
               "the epochs.", rich_help_panel="Optimization")
WarmupOpt = typer.Option(None, help=f"Linear warm-up epochs (default {_D.warmup_epochs}).",
    rich_help_panel="Optimization")
WdOpt = typer.Option(None, help=f"Weight decay (default {_D.weight_decay}).", rich_help_panel="Optimization")
SeedOpt = typer.Option(None, help=f"Random seed for model init, data order and augmentation (default {_D.seed}).",
    rich_help_panel="Optimization")
DeviceOpt = typer.Option(None, help="auto (GPU if there is one), cpu or cuda.", rich_help_panel="Run")
OutOpt = typer.Option(
    None, "--out", "-o", help="Run dir to write (default: a folder in runs/ named by method, model, data and seed).",
    rich_help_panel="Run")
ResumeOpt = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint.",
    rich_help_panel="Run")
WorkersOpt = typer.Option(None, help=f"DataLoader worker processes (default {_D.workers}).", rich_help_panel="Run")
AmpOpt = typer.Option(None, help="Mixed precision: auto (bf16/fp16 on CUDA, off on CPU), off, bf16, fp16.",
    rich_help_panel="Run")
CompileOpt = typer.Option(None, "--compile/--no-compile", help="torch.compile the student.", rich_help_panel="Run")
TensorBoardOpt = typer.Option(
    None, "--tensorboard/--no-tensorboard",
    help="Also write each epoch's losses, accuracies, lr and images/s as TensorBoard scalars (RUN_DIR/tensorboard).",
    rich_help_panel="Run")
NprocOpt = typer.Option(
    1, "--nproc",
    help="DDP processes to run on this machine, as torchrun --standalone would (gloo on CPU, NCCL on GPUs; "
         "each gets cores/N OpenMP threads unless OMP_NUM_THREADS is set).", rich_help_panel="Run")
PretrainedOpt = typer.Option(
    None, "--pretrained/--no-pretrained",
    help="Start the model (distill: the student) from its architecture's default published weights (tv/ models), with "
         "a new head for the data's classes and the weights' own preprocessing.", rich_help_panel="Data and model")
WeightsOpt = typer.Option(
    None, help="Start from these weights instead: a published name (e.g. IMAGENET1K_V1) or a torch.save state_dict "
               "file.", rich_help_panel="Data and model")
InitOpt = typer.Option(
    None, "--init",
    help="Start from this run dir's model: its architecture (a pruned one included), weights and preprocessing, "
         "instead of a fresh --model/--student.", rich_help_panel="Data and model")
ImageSizeOpt = typer.Option(None, help="Resize images to this size (default: the dataset's own).",
    rich_help_panel="Data and model")


def _launch(nproc: int, cfg: Any) -> None:
    """Run this same command in ``nproc`` DDP processes (the --nproc shortcut for torchrun), once its setup checks
    pass."""
    from edgekd.distributed import launch_local
    from edgekd.engine.checks import preflight

    preflight(cfg, nproc)  # a user mistake is one line here, not one per process
    rest: list[str] = []
    skip = False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            rest.append(a)
    launch_local(nproc, rest)
    raise typer.Exit(0)


def _parse_args(pairs: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise EdgeKDError(f"--arg takes KEY=VALUE (e.g. --arg alpha=0.9), got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def _run_training(overrides: dict[str, Any], config: Optional[Path], nproc: int) -> None:
    if nproc < 1:
        raise EdgeKDError(f"--nproc must be >= 1, got {nproc}")
    from edgekd.config import run_config

    cfg = run_config(config, overrides)  # as Run.train/distill build it
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        _launch(nproc, cfg)
    from edgekd.train import run_training

    summary = run_training(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        console.print(
            f"[green]done[/]: {summary['method']} {summary['model']} on {escape(summary['dataset'])}: "
            f"best held-out acc {summary['best_acc']:.4f}, final {summary['final_acc']:.4f}, "
            f"{summary['seconds']:.1f} s -> {summary['out']}", soft_wrap=True,  # a path is copied whole, not wrapped
        )


@app.command()
def train(
    config: Optional[Path] = ConfigOpt,
    data: Optional[str] = DataOpt,
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help=f"Architecture (see `edgekd models`; default {_D.model}).",
            rich_help_panel="Data and model"),
    pretrained: Optional[bool] = PretrainedOpt,
    weights: Optional[str] = WeightsOpt,
    init: Optional[str] = InitOpt,
    epochs: Optional[int] = EpochsOpt,
    batch_size: Optional[int] = BatchOpt,
    accumulate: Optional[int] = AccumulateOpt,
    lr: Optional[float] = LrOpt,
    optimizer: Optional[str] = OptimOpt,
    schedule: Optional[str] = ScheduleOpt,
    milestones: Optional[str] = MilestonesOpt,
    warmup_epochs: Optional[int] = WarmupOpt,
    weight_decay: Optional[float] = WdOpt,
    image_size: Optional[int] = ImageSizeOpt,
    seed: Optional[int] = SeedOpt,
    device: Optional[str] = DeviceOpt,
    amp: Optional[str] = AmpOpt,
    compile: Optional[bool] = CompileOpt,
    tensorboard: Optional[bool] = TensorBoardOpt,
    workers: Optional[int] = WorkersOpt,
    out: Optional[str] = OutOpt,
    resume: bool = ResumeOpt,
    nproc: int = NprocOpt,
) -> None:
    """Train a model with plain cross-entropy (teachers and baselines)."""
    overrides = {k: v for k, v in locals().items() if k not in ("config", "nproc")}
    overrides["milestones"] = None if milestones is None else int_list(milestones, "--milestones", allow_empty=True)
    overrides.update(method="ce", method_args={}, rectify=False)  # a recipe's distillation keys do not apply
    overrides["resume"] = resume or None
    _run_training(overrides, config, nproc)


@app.command()
def distill(
    config: Optional[Path] = ConfigOpt,
    method: Optional[str] = typer.Option(
        None, help="Distillation method (`edgekd methods` lists them); required unless the recipe names one.",
        rich_help_panel="Method and teacher"),
    student: Optional[str] = typer.Option(
        None, "--student", "-s", rich_help_panel="Data and model",
        help=f"Student architecture (see `edgekd models`; default {_D.model}, the student of the standard CIFAR pair "
             "resnet56→resnet20 that the methods' papers report)."),
    pretrained: Optional[bool] = PretrainedOpt,
    weights: Optional[str] = WeightsOpt,
    init: Optional[str] = InitOpt,
    teacher: Optional[str] = typer.Option(
        None, help="Teacher: an edgekd run dir, or a checkpoint file with --teacher-arch.",
            rich_help_panel="Method and teacher"),
    teacher_arch: Optional[str] = typer.Option(
        None, help="Architecture of a foreign --teacher checkpoint (e.g. resnet32x4), or of a --teacher-weights "
                   "teacher.", rich_help_panel="Method and teacher"),
    teacher_weights: Optional[str] = typer.Option(
        None, help="With --teacher-arch and no --teacher: start the teacher from published weights (DEFAULT, or a name "
                   "such as IMAGENET1K_V2) or a state_dict file, head included: they must already know the data's "
                   "classes.", rich_help_panel="Method and teacher"),
    rectify: Optional[bool] = typer.Option(
        None, "--rectify/--no-rectify", help="DR-KD rectification of the teacher for any teacher-based method.",
            rich_help_panel="Method and teacher"),
    arg: list[str] = typer.Option(
        [], "--arg", help="Method option KEY=VALUE, repeatable (e.g. --arg alpha=0.9 --arg T=4); an unknown KEY lists "
                          "the method's options.", rich_help_panel="Method and teacher"),
    data: Optional[str] = DataOpt,
    epochs: Optional[int] = EpochsOpt,
    batch_size: Optional[int] = BatchOpt,
    accumulate: Optional[int] = AccumulateOpt,
    lr: Optional[float] = LrOpt,
    optimizer: Optional[str] = OptimOpt,
    schedule: Optional[str] = ScheduleOpt,
    milestones: Optional[str] = MilestonesOpt,
    warmup_epochs: Optional[int] = WarmupOpt,
    weight_decay: Optional[float] = WdOpt,
    image_size: Optional[int] = ImageSizeOpt,
    seed: Optional[int] = SeedOpt,
    device: Optional[str] = DeviceOpt,
    amp: Optional[str] = AmpOpt,
    compile: Optional[bool] = CompileOpt,
    tensorboard: Optional[bool] = TensorBoardOpt,
    workers: Optional[int] = WorkersOpt,
    out: Optional[str] = OutOpt,
    resume: bool = ResumeOpt,
    nproc: int = NprocOpt,
) -> None:
    """Distil a student from a teacher (or from itself: drkd, tfkd-self) with a registered method."""
    overrides = {k: v for k, v in locals().items() if k not in ("config", "nproc", "student", "arg")}
    overrides["model"] = student
    overrides["milestones"] = None if milestones is None else int_list(milestones, "--milestones", allow_empty=True)
    overrides["resume"] = resume or None
    if arg:
        overrides["method_args"] = _parse_args(arg)
    if method is None:  # no default: distilling with plain cross-entropy by omission surprises
        from edgekd.config import run_recipe
        from edgekd.settings import read_recipe

        recipe = run_recipe(config, {"out": out, "resume": resume})
        if recipe is None or "method" not in read_recipe(recipe):
            raise EdgeKDError("distill needs --method (`edgekd methods` lists them), or a recipe (-c) that names one")
    _run_training(overrides, config, nproc)


@app.command()
def models(
    num_classes: int = typer.Option(100, help="Classes for the parameter/MAC count."),
    tv: bool = typer.Option(
        False, "--tv", help="Also list torchvision's ImageNet models (tv/<name>, at their own input size; slow: builds "
                            "every one)."),
    timm: bool = typer.Option(
        False, "--timm", help="Also list timm's models (timm/<name>; over a thousand: narrow them with --match)."),
    match: Optional[str] = typer.Option(
        None, help="Only names matching this pattern, e.g. 'timm/mobilenetv4*' or '*resnet*'."),
) -> None:
    """List the model registry with parameters and MACs."""
    import fnmatch

    from edgekd.models import list_models, model_summary

    families = {
        "tv/": ("torchvision", tv, "tv/resnet18", "--tv"),
        "timm/": ("timm", timm, "timm/efficientnet_b0", "--timm"),
    }
    names = list_models()
    shown = [n for n in names
             if all(shown_family or not n.startswith(prefix) for prefix, (_, shown_family, _, _) in families.items())]
    shown = [n for n in shown if match is None or fnmatch.fnmatch(n.lower(), match.lower())]
    table = Table(title=f"models ({num_classes} classes)")
    for col in ("name", "input", "params (M)", "MACs (M)"):
        table.add_column(col, justify="left" if col == "name" else "right", overflow="fold")
    with console.status("") as status:  # each MAC count runs the model once: seconds in all
        for i, name in enumerate(shown, 1):
            status.update(f"counting parameters and MACs: {name} ({i}/{len(shown)})")
            info = model_summary(name, num_classes)
            size = info["input_size"]
            table.add_row(name, f"{size[1]}x{size[2]}", f"{info['params'] / 1e6:.2f}", f"{info['macs'] / 1e6:.1f}")
    console.print(table)
    for prefix, (library, listed, example, flag) in families.items():
        if not listed:
            count = sum(n.startswith(prefix) for n in names)
            console.print(f"plus {count} {library} models as {prefix}<name> (e.g. {example}); {flag} lists them")


# bench.md's columns under the short names a terminal shows; the status becomes a mark after the format
BENCH_COLUMNS = {
    "machine": "Machine",
    "format": "Format",
    "batch": "Batch",
    "threads": "Threads",
    "MB": "Size (MB)",
    "top-1": "Accuracy",
    "p50 ms": "p50 (ms)",
    "p99 ms": "p99 (ms)",
    "img/s": "Throughput (img/s)",
    "speed-up": "Speed-up",
}
STATUS_MARKS = {"ok": "", "skipped": " ❎", "error": " ❌"}


def _print_bench(rows: list[dict], title: str) -> None:
    """bench.md's content for a terminal, in 80 columns: every number whole, reasons for skipped rows below."""
    from rich.markdown import Markdown

    from edgekd.export.bench_report import (
        MD_HEADER,
        format_label,
        machine_lines,
        row_cells,
        several_machines,
        summary_lines,
    )

    many = several_machines(rows)
    header = (("Machine",) if many else ()) + MD_HEADER
    columns = [name for name in BENCH_COLUMNS if many or name != "machine"]
    threads = {r["threads"] for r in rows}
    if len(threads) == 1:  # one setting for all rows: said in the title instead
        columns.remove("threads")
        title += f" (threads {threads.pop() or 'auto'})"
    table = Table(title=Text(title), box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for name in columns:
        text = name in ("machine", "format")  # the only columns that may wrap; numbers stay whole
        table.add_column(name, justify="left" if text else "right", overflow="fold", no_wrap=not text,
                         min_width=12 if name == "format" else None)
    for r in rows:
        cells = dict(zip(header, row_cells(r, many)))
        cells["Format"] += STATUS_MARKS[r["status"].split(":")[0]]
        table.add_row(*(Text(cells[BENCH_COLUMNS[name]]) for name in columns))
    console.print(Markdown("\n".join(machine_lines(rows))))
    console.print(table)
    for reason in dict.fromkeys(f"{format_label(r)}: {r['status']}" for r in rows if r["status"].startswith("skipped")):
        console.print(f"❎ {escape(reason)}", highlight=False)  # errors go to stderr, with the exit code
    console.print(Markdown("\n".join(summary_lines(rows))))


@app.command()
def methods() -> None:
    """List the distillation methods (`distill --method`), whether each needs a teacher, and its options."""
    from edgekd.methods import list_methods, method_class

    table = Table(title="methods", show_lines=True, expand=True)
    table.add_column("--method", no_wrap=True)
    table.add_column("teacher", max_width=9)
    table.add_column("what it is, and its --arg options (defaults)", overflow="fold", ratio=1)
    for name in list_methods():
        cls = method_class(name)
        doc = cls.__doc__ or sys.modules[cls.__module__].__doc__ or ""  # its own, else its module's first paragraph
        what = " ".join(doc.split("\n\n")[0].split()).replace("``", "`")
        teacher = "needed" if cls.needs_teacher else "its own" if cls.uses_teacher else "none"
        options = ", ".join(f"{k}={v}" for k, v in cls.defaults.items()) or "none"
        table.add_row(name, teacher, f"{what}\noptions: {options}")
    console.print(table)


@app.command()
def datasets() -> None:
    """List the datasets and the files each expects (nothing is ever downloaded)."""
    from edgekd.data import list_datasets

    table = Table(title="datasets", show_lines=True, expand=True)
    table.add_column("--data", no_wrap=True)
    table.add_column("classes, input", overflow="fold", max_width=24)
    table.add_column("what it is, and the files it reads", overflow="fold", ratio=1)
    for row in list_datasets():
        table.add_row(row["spec"], f"{row['classes']}\n{row['input_size']}",
                      f"{row['description']}\nfiles: {row['layout']}")
    console.print(table)


@app.command()
def prune(
    ctx: typer.Context,
    run: Path = typer.Argument(..., help="Run dir of the model to prune."),
    out: Path = typer.Option(..., "--out", "-o", help="Run dir to write the pruned (and recovered) model to."),
    ratio: Optional[float] = typer.Option(
        None, help="Channel ratio to remove from every layer group (structured) or weight rate (l1-unstructured); "
                   f"default {PRUNE.ratio}."),
    target_macs: Optional[float] = typer.Option(
        None, help="Instead of --ratio: prune in small steps until the model has this fraction of its MACs "
                   "(e.g. 0.5)."),
    prune_method: str = typer.Option(
        PRUNE.prune_method, help="structured (torch-pruning DepGraph) or l1-unstructured."),
    channel_multiple: int = typer.Option(
        PRUNE.channel_multiple,
        help="Structured: keep every channel count a multiple of this (ONNX Runtime's x86 kernels work on 8 FP32 "
             "channels at a time, its AVX-512 INT8 kernels on 16; other counts can leave the pruned model slower "
             "than the unpruned one). 1: exact ratio."),
    recover_epochs: int = typer.Option(
        PRUNE.recover_epochs,
        help="Then distil the pruned model from the unpruned one for this many epochs (0: prune only). The pruned "
             "model goes to OUT/pruned, the recovered one to OUT."),
    recover_method: str = typer.Option(
        PRUNE.recover_method, "--recover-method", "--method",
        help="Recovery method: kd, r2kd, dkd, dist, ... or ce (fine-tune without the teacher). --method: the old "
             "spelling, deprecated."),
    arg: list[str] = typer.Option([], "--arg", help="Recovery method option KEY=VALUE, repeatable (e.g. --arg T=4)."),
    lr: float = typer.Option(PRUNE.lr, help="Recovery peak learning rate (a fine-tune of trained weights)."),
    batch_size: Optional[int] = BatchOpt,
    seed: Optional[int] = SeedOpt,
    device: Optional[str] = DeviceOpt,
    workers: Optional[int] = WorkersOpt,
    config: Optional[Path] = StageConfigOpt,
) -> None:
    """Prune a trained model (structured: really fewer channels) and, with --recover-epochs, win its accuracy back."""
    from edgekd.recover import prune as prune_and_maybe_recover  # what Run.prune calls; its options checked first

    how = with_recipe({"ratio": ratio, "target_macs": target_macs, "prune_method": prune_method,
                       "channel_multiple": channel_multiple, "recover_epochs": recover_epochs,
                       "recover_method": recover_method, "lr": lr}, config, "prune", given_options(ctx))
    result = prune_and_maybe_recover(run, out, **how, recover_args=_parse_args(arg), batch_size=batch_size,
                                     seed=seed, device=device, workers=workers)
    recover = how['recover_epochs'] > 0
    amount = (f"to {how['target_macs']:g} of the MACs" if how['target_macs'] is not None
              else f"ratio {how['ratio'] if how['ratio'] is not None else PRUNE.ratio}")
    table = Table(title=Text(f"pruned {run} ({how['prune_method']}, {amount})"))
    for col in ("", "MACs (M)", "params (M)", "held-out acc"):
        table.add_column(col, justify="right", overflow="fold")
    stages = [("before", "before", "before"), ("pruned", "after", "pruned" if recover else "after")]
    if recover:
        stages.append((f"recovered ({how['recover_method']}, {how['recover_epochs']} ep)", "after", "recovered"))
    for label, size, acc in stages:
        table.add_row(label, f"{result[f'macs_{size}'] / 1e6:.2f}", f"{result[f'params_{size}'] / 1e6:.3f}",
                      f"{result[f'acc_{acc}']:.4f}")
    console.print(table)
    reached = result["macs_after"] / result["macs_before"]
    if how['target_macs'] is not None and reached > how['target_macs'] and how['prune_method'] == "structured":
        console.print(f"[yellow]note[/] {reached:.2f} of the MACs left, not {how['target_macs']:g}: no channel count "
                      f"can go lower in multiples of {how['channel_multiple']} (a smaller --channel-multiple prunes "
                      "finer)")
    console.print(f"[green]wrote[/] {escape(str(out))}")
    if any(a == "--method" or a.startswith("--method=") for a in sys.argv):
        Console(stderr=True, soft_wrap=True).print(
            "[yellow]note[/] prune's --method is now --recover-method; the old spelling goes in the next release")


@app.command()
def fit(
    ctx: typer.Context,
    run: Path = typer.Argument(..., help="Run dir of the trained model to fit to the budget."),
    budget_ms: float = typer.Option(..., "--budget-ms", help="The latency the served model may take, in ms."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the fitted run dir, fit.json and export/."),
    metric: str = typer.Option(FIT.metric, help="The latency percentile the budget bounds: p50 or p90."),
    batch: int = typer.Option(FIT.batch, help="Batch size the budget is measured at."),
    threads: Optional[int] = typer.Option(FIT.threads, help="Runtime threads (default: the runtime's own)."),
    runtime: str = typer.Option(FIT.runtime, help="The runtime that will serve the model (ort or openvino)."),
    precision: str = typer.Option(FIT.precision, help="The precision that will be served (int8 or fp32)."),
    step: float = typer.Option(FIT.step, help="Each search step cuts the measured latency by this fraction."),
    finetune_steps: int = typer.Option(
        FIT.finetune_steps, help="KD steps that fine-tune each candidate before it is ranked by holdout accuracy."),
    recover_epochs: int = typer.Option(
        FIT.recover_epochs, help="Epochs of KD from the unpruned model that recover the chosen model."),
    lr: float = typer.Option(FIT.lr, help="Learning rate of the fine-tunes and the recovery."),
    batch_size: int = typer.Option(FIT.batch_size, "--batch-size", "-b", help="Training images per step."),
    channel_multiple: int = typer.Option(
        FIT.channel_multiple, help="Channel counts stay multiples of this (see `edgekd prune --help`)."),
    seconds: float = typer.Option(FIT.seconds, help="Timing per candidate, in interleaved rounds as bench times."),
    calib_samples: int = typer.Option(FIT.calib_samples, help="INT8 calibration images of each timed candidate."),
    students: str = typer.Option(
        ",".join(FIT.students), help="Comma-separated registered models (`edgekd models`) to choose from "
        "instead of RUN's own: each is measured at full and smallest width, those that cannot meet the budget are "
        "dropped, the rest distilled from RUN for --student-epochs, and the most accurate is fitted."),
    student_epochs: int = typer.Option(FIT.student_epochs, help="KD epochs of each student before they are ranked."),
    layer_precision: bool = typer.Option(
        FIT.layer_precision, "--layer-precision",
        help="Before the final export, try each layer of the ONNX Runtime INT8 model in FP32 and keep it so where "
             "the whole model measures faster (thin and depthwise layers can be slower in INT8)."),
    compare_uniform: bool = typer.Option(
        FIT.compare_uniform, "--uniform/--no-uniform",
        help="Each step also measures and fine-tunes the --target-macs prune at the MACs of its choice, which "
             "`edgekd report` draws beside the search."),
    seed: int = typer.Option(0, help="Seed of the holdout split and the fine-tunes."),
    remote: Optional[str] = typer.Option(
        None, help="Measure on user@host[:path] over SSH, as `edgekd bench --remote` does (edgekd\\[device] there)."),
    remote_python: str = typer.Option("python3", help="Python on the remote machine."),
    ssh_port: Optional[int] = typer.Option(None, help="SSH port of --remote."),
    identity: Optional[Path] = typer.Option(None, help="SSH private key for --remote."),
    resume: bool = typer.Option(False, "--resume", help="Continue the fit in --out where it stopped."),
    config: Optional[Path] = StageConfigOpt,
) -> None:
    """The most accurate pruned model whose measured latency on the target meets --budget-ms (NetAdapt-style)."""
    from edgekd.fit import fit as run_fit

    how = with_recipe({"metric": metric, "batch": batch, "threads": threads, "runtime": runtime,
                       "precision": precision, "step": step, "finetune_steps": finetune_steps,
                       "recover_epochs": recover_epochs, "lr": lr, "batch_size": batch_size,
                       "channel_multiple": channel_multiple, "seconds": seconds, "calib_samples": calib_samples,
                       "students": tuple(csv_list(students)), "student_epochs": student_epochs,
                       "layer_precision": layer_precision, "compare_uniform": compare_uniform},
                      config, "fit", given_options(ctx))
    record = run_fit(run, out, budget_ms, **how, seed=seed, remote=remote, remote_python=remote_python,
                     ssh_port=ssh_port, identity=identity, resume=resume, progress=True)
    table = Table(title=Text(f"fit {run} to {record['budget_ms']:g} ms {how['metric']} "
                             f"({how['runtime']} {how['precision']}, batch {how['batch']})"))
    if record.get("students"):
        chosen = Table(title=Text(f"students (KD from {run}, {record['options']['student_epochs']} epochs)"))
        for col in ("student", "full width (ms)", "smallest (ms)", "accuracy", "why"):
            chosen.add_column(col, justify="left" if col in ("student", "why") else "right", overflow="fold")
        for r in record["students"]["candidates"]:
            chosen.add_row(r["name"], "" if r["full_ms"] is None else f"{r['full_ms']:.3f}",
                           "" if r["smallest_ms"] is None else f"{r['smallest_ms']:.3f}",
                           "" if r["accuracy"] is None else f"{r['accuracy']:.4f}", r["why"])
        console.print(chosen)
    for col in ("step", "layer group", "channels", "latency (ms)", "holdout acc"):
        table.add_column(col, justify="right", overflow="fold")
    table.add_row("unpruned", "", "", f"{record['baseline']['latency_ms']:.3f}", "")
    for number, s in enumerate(record["steps"], 1):
        c = s["chosen"]
        table.add_row(str(number), c["group"], f"{c['channels']} -> {c['keep']}", f"{c['latency_ms']:.3f}",
                      f"{c['accuracy']:.4f}")
    final = record["final"]
    table.add_row("final", "", "", f"{final['latency_ms']:.3f}", f"{final['accuracy']:.4f} (held-out)")
    console.print(table)
    if not record["steps"]:
        console.print(f"the unpruned model already meets {record['budget_ms']:g} ms: exported as it is")
    console.print(f"[green]wrote[/] {escape(str(out / 'fit.json'))}, {escape(final['export'])}")
    if not final["meets_budget"]:
        _print_error(f"the exported model measured {final['latency_ms']:.3f} ms, over the {record['budget_ms']:g} ms "
                     f"budget (the search's measurements were noisier than the margin): measure it again with "
                     "`edgekd bench`, or fit again with a smaller --budget-ms", "over budget:")
        raise typer.Exit(1)


@app.command()
def export(
    ctx: typer.Context,
    run: Path = typer.Argument(..., help="Run dir from `edgekd train`, `distill` or `prune`."),
    out: Path = typer.Option(..., "--out", "-o", help="Export dir to write (manifest.json + artifacts)."),
    int8: bool = typer.Option(False, "--int8", help="Also quantize to INT8 (ORT static QDQ, OpenVINO NNCF)."),
    formats: str = typer.Option(
        ",".join(FORMATS), help="Comma-separated: " + ", ".join(f"{k} ({f.title})" for k, f in FORMATS.items()) + "."),
    calib_samples: int = typer.Option(EXPORT.calib_samples, help="Training images used to calibrate INT8."),
    calib_method: str = typer.Option(
        EXPORT.calib_method,
        help="ONNX Runtime INT8 calibration: minmax, entropy or percentile (OpenVINO INT8 uses NNCF's own)."),
    max_drop: Optional[str] = typer.Option(
        None, help="Largest top-1 drop (points, held-out split) an INT8 artifact may have (default "
                   f"{EXPORT.max_drop}): ONNX Runtime "
                   "tries other calibrations, more images and the sensitive layers in FP32 until one meets it, "
                   "OpenVINO uses NNCF's accuracy control; an artifact that still misses it is not written. "
                   "'none': plain PTQ."),
    fp16: bool = typer.Option(
        False, "--fp16", help="Also write FP16 artifacts where a format has them (an OpenVINO FP16-compressed IR)."),
    qat_epochs: int = typer.Option(
        EXPORT.qat_epochs,
        help="When ONNX Runtime's INT8 still misses --max-drop, fine-tune the fake-quantized model this many epochs, "
             "distilled from the run's teacher (else from the FP32 model), and export that instead (0: never)."),
    fp32_nodes: str = typer.Option(
        ",".join(EXPORT.fp32_nodes), help="Comma-separated ONNX node names the ONNX Runtime INT8 artifact keeps in "
        "FP32 (its Conv, Gemm and MatMul nodes; `edgekd fit` picks those that measured slower in INT8)."),
    config: Optional[Path] = StageConfigOpt,
) -> None:
    """Export a run to verified ONNX / OpenVINO artifacts (and INT8) with a manifest."""
    from edgekd.export import export_run, manifest_table_rows  # what Run.export calls

    if max_drop is not None and not int8:
        raise EdgeKDError("--max-drop bounds the INT8 artifacts' accuracy drop; add --int8 or drop --max-drop")
    bound = EXPORT.max_drop if max_drop is None else None if max_drop.strip().lower() == "none" else _points(max_drop)
    how = with_recipe({"int8": int8, "calib_samples": calib_samples, "calib_method": calib_method, "max_drop": bound,
                       "qat_epochs": qat_epochs, "fp16": fp16, "fp32_nodes": tuple(csv_list(fp32_nodes))},
                      config, "export", given_options(ctx))
    manifest = export_run(run, out, formats=tuple(csv_list(formats)), **how)
    _print_export(manifest_table_rows(manifest), f"export of {run} -> {out}")


def _points(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise EdgeKDError(f"--max-drop takes top-1 points (e.g. 0.5) or 'none', got {text!r}") from None


def _print_export(rows: list[dict[str, str]], title: str) -> None:
    """The export summary in 80 columns: every number whole, a dropped artifact marked, with its reason below."""
    table = Table(title=Text(title), box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    columns = [name for name in rows[0] if name != "status"]
    for name in columns:
        text = name == "format"  # the only column that may wrap
        table.add_column(name, justify="left" if text else "right", overflow="fold", no_wrap=not text,
                         min_width=15 if text else None)
    dropped = {r["format"]: r["status"] for r in rows if r["status"].startswith("dropped")}
    for r in rows:
        mark = STATUS_MARKS["skipped"] if r["format"] in dropped else ""
        table.add_row(*(Text(r[name] + mark if name == "format" else r[name]) for name in columns))
    console.print(table)
    for name, status in dropped.items():
        console.print(f"❎ {escape(name)}: {escape(status)}", highlight=False)


@app.command()
def bench(
    ctx: typer.Context,
    export_dirs: list[Path] = typer.Argument(
        ..., help="Export dir from `edgekd export` (reads only its manifest and artifacts); several are timed in the "
                  "same interleaved rounds, so they compare fairly on a busy machine."),
    runtimes: str = bench_options.RuntimesOpt,
    precisions: str = bench_options.PrecisionsOpt,
    batch: str = bench_options.BatchOpt,
    threads: str = bench_options.ThreadsOpt,
    warmup: int = bench_options.WarmupOpt,
    iters: Optional[int] = bench_options.ItersOpt,
    seconds: float = bench_options.SecondsOpt,
    ov_hint: str = bench_options.OvHintOpt,
    ov_streams: Optional[int] = bench_options.OvStreamsOpt,
    remote: Optional[str] = typer.Option(
        None, help="Also run on user@host[:path] over SSH (edgekd\\[device] installed there)."),
    remote_python: str = typer.Option("python3", help="Python on the remote machine."),
    ssh_port: Optional[int] = typer.Option(None, help="SSH port of --remote."),
    identity: Optional[Path] = typer.Option(None, help="SSH private key for --remote."),
    out: Path = typer.Option(Path("bench"), "--out", "-o", help="Folder for bench.json, bench.md and bench.png."),
    config: Optional[Path] = StageConfigOpt,
) -> None:
    """Measure latency and throughput of every artifact (p50/p90/p99), write a report, and name the fastest."""
    from edgekd.export.bench import run_bench
    from edgekd.export.bench_report import merge_reports, write_report
    from edgekd.fsutil import check_can_create

    check_can_create(out, "folder")  # before minutes of measuring, not after
    if remote:
        from edgekd.export.remote import check_remote_options

        check_remote_options(remote, ssh_port, identity)
    options = with_recipe(bench_options.measurement_options(runtimes, precisions, batch, threads, warmup, iters,
                                                            seconds, ov_hint, ov_streams),
                          config, "bench", given_options(ctx, {"batch": "batches"}))
    rows = run_bench(export_dirs, **options)
    if remote:
        from edgekd.export.remote import run_remote

        console.print(f"benchmarking on {escape(remote)} ...")
        remote_rows = run_remote(remote, export_dirs, options, port=ssh_port, identity=identity,
                                 remote_python=remote_python)
        rows = merge_reports(rows, remote_rows)
    names = ", ".join(map(str, export_dirs))
    if not any(r["status"] == "ok" for r in rows):  # a report of failures only is no benchmark: say why, write nothing
        reasons = dict.fromkeys(r["status"] for r in rows)
        raise EdgeKDError(f"nothing in {names} could be measured: {'; '.join(reasons)}")
    title = f"edgekd bench: {names}"
    paths = write_report(rows, out, title)
    _print_bench(rows, title)
    console.print(f"[green]wrote[/] {escape(', '.join(str(paths[k]) for k in ('json', 'md', 'png')))}")
    failed = [r for r in rows if r["status"].startswith("error")]
    if failed:  # the report keeps what did run; the exit code tells scripts that something did not
        for r in failed:
            _print_error(f"{r.get('artifact') or r['runtime']} {r['precision']} batch {r['batch']}: {r['status']}",
                         "failed:")
        raise typer.Exit(1)


app.command()(serve_command)


PER_CLASS_MAX = 20  # classes shown per class in the terminal; --json has them all


@app.command()
def val(
    export_dir: Path = typer.Argument(..., help="Export dir from `edgekd export`."),
    data: str = typer.Option(
        ..., help="Labelled images: a folder with one sub-folder per class, named as the export's classes "
                  "(imagefolder:PATH with train/ and val/ is read at val/)."),
    runtimes: Optional[str] = typer.Option(
        None, help=f"Comma-separated: {', '.join(artifact_runtimes())} (default: all)."),
    precisions: Optional[str] = typer.Option(None, help=f"Comma-separated: {', '.join(PRECISIONS)} (default: all)."),
    batch: int = typer.Option(OFFLINE.batch, "--batch", help="Images per inference call."),
    threads: Optional[int] = ThreadsOpt,
    json_out: Optional[Path] = typer.Option(
        None, "--json", help="Also write the results, per class too, to this JSON file."),
) -> None:
    """Top-1, top-5 and per-class accuracy of every artifact on labelled images, preprocessed as `serve` does."""
    from edgekd.fsutil import check_can_create, write_json
    from edgekd.serve.val import run_val

    if json_out is not None:
        check_can_create(json_out, "file")
    report = run_val(export_dir, data, runtimes=csv_list(runtimes) if runtimes else None,
                     precisions=csv_list(precisions) if precisions else None, batch=batch, threads=threads)
    if json_out is not None:
        write_json(json_out, report)
    _print_val(report)
    for bad in report["unreadable"]:
        _print_error(f"{bad['file']}: {bad['error']}")
    failed = [r for r in report["artifacts"] if r["status"].startswith("error")]
    for r in failed:
        _print_error(f"{r['artifact']} on {r['runtime']}: {r['status'].removeprefix('error: ')}", "failed:")
    if failed or report["unreadable"]:  # the table keeps what was scored; the exit code tells scripts what was not
        raise typer.Exit(1)


def _print_val(report: dict[str, Any]) -> None:
    """One row per artifact (top-1, top-5, the manifest's held-out top-1), then per class when there are few classes."""
    rows = report["artifacts"]
    title = f"edgekd val: {report['export']} on {report['data']} ({report['images']} images)"
    table = Table(title=Text(title), box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for name in ("artifact", "runtime", "top-1", "top-5", "manifest top-1"):
        table.add_column(name, justify="left" if name in ("artifact", "runtime") else "right")
    for r in rows:
        ok = r["status"] == "ok"
        mark = "" if ok else STATUS_MARKS[r["status"].split(":")[0]]
        scores = [f"{r[k]:.4f}" if ok else "-" for k in ("top1", "top5")]
        manifest = "-" if r["manifest_accuracy"] is None else f"{r['manifest_accuracy']:.4f}"
        table.add_row(Text(r["artifact"] + mark), r["runtime"], *scores, manifest)
    console.print(table)
    for r in rows:
        if r["status"].startswith("skipped"):
            console.print(f"❎ {escape(r['artifact'])}: {escape(r['status'])}", highlight=False)
    scored = [r for r in rows if r["status"] == "ok"]
    if not scored:
        return
    classes = scored[0]["per_class"]
    if len(classes) > PER_CLASS_MAX:
        console.print(f"per-class top-1 of the {len(classes)} classes: pass --json FILE")
        return
    per_class = Table(title="per-class top-1", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    per_class.add_column("class")
    per_class.add_column("images", justify="right")
    keys = [r["artifact"] for r in scored]
    for r in scored:  # an artifact scored on two runtimes is named with each
        name = r["artifact"] if keys.count(r["artifact"]) == 1 else f"{r['artifact']} {r['runtime']}"
        per_class.add_column(name, justify="right")
    for name, count in classes.items():
        top1 = [r["per_class"][name]["top1"] for r in scored]
        per_class.add_row(Text(name), str(count["images"]), *("-" if a is None else f"{a:.4f}" for a in top1))
    console.print(per_class)


@app.command()
def predict(
    export_dir: Path = typer.Argument(..., help="Export dir from `edgekd export`."),
    paths: list[Path] = typer.Argument(..., help="Image files, and folders searched recursively for images."),
    top_k: Optional[int] = typer.Option(
        None, "--top-k", help="Classes per image (default: 5, or all if fewer), as /predict's top_k."),
    runtime: Optional[str] = RuntimeOpt,
    precision: Optional[str] = PrecisionOpt,
    threads: Optional[int] = ThreadsOpt,
    batch: int = typer.Option(OFFLINE.batch, "--batch", help="Images per inference call."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the predictions to this JSON file."),
) -> None:
    """Classify image files without a server: the artifact, preprocessing and scores `serve` would use."""
    from edgekd.fsutil import check_can_create, write_json
    from edgekd.serve.offline import Classifier, check_top_k, find_images

    if json_out is not None:
        check_can_create(json_out, "file")
    files = find_images(paths)
    classifier = Classifier(export_dir, runtime=runtime, precision=precision, threads=threads)
    k = check_top_k(top_k, len(classifier.class_names))
    results = classifier.predict(files, k, batch=batch, progress=any(p.is_dir() for p in paths))
    if json_out is not None:
        write_json(json_out, {
            "export": str(export_dir), "model": classifier.manifest.get("model"), "artifact": classifier.key,
            "runtime": classifier.runtime_name, "precision": classifier.precision, "top_k": k, "files": results,
        })
    title = f"edgekd predict: {export_dir} ({classifier.key} on {classifier.runtime_name})"
    _print_predict([r for r in results if "predictions" in r], k, title)
    failed = [r for r in results if "error" in r]
    for r in failed:  # one line per file; the others are classified all the same
        _print_error(f"{r['file']}: {r['error']}")
    if failed:
        raise typer.Exit(1)


def _print_predict(results: list[dict[str, Any]], k: int, title: str) -> None:
    """One row per classified file: its top-k classes as "label score", best first."""
    if not results:
        return
    table = Table(title=Text(title), box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    table.add_column("file", overflow="fold")
    for rank in range(1, k + 1):
        table.add_column(str(rank))
    for r in results:
        table.add_row(Text(r["file"]), *(Text(f"{p['label']} {p['score']:.4f}") for p in r["predictions"]))
    console.print(table)


@app.command()
def report(
    root: Path = typer.Argument(..., help="A run dir, export dir, or `edgekd demo` dir."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="HTML file to write (default ROOT/report.html)."),
) -> None:
    """Write a self-contained HTML report (curves, accuracy, latency; opens with no network)."""
    from edgekd.report import build_report

    path = build_report(root, out)
    console.print(f"[green]wrote[/] {escape(str(path))}")


@app.command()
def demo(
    out: Path = typer.Option(Path("edgekd-demo"), "--out", "-o", help="Folder for everything the demo makes."),
    quick: bool = typer.Option(
        False, "--quick", help="Fewer epochs, shorter timings and plain INT8 PTQ without the accuracy-bound search "
                               "(2-3 minutes on 2 CPU cores)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
) -> None:
    """From nothing to a served INT8 model on the embedded digits data: train, distil, prune, export, bench, serve."""
    from edgekd.demo import run_demo

    run_demo(out, quick=quick, device=device, console=console)


# What the training side needs beyond the device install (edgekd[train] in pyproject.toml), by import name
TRAIN_MODULES = (
    "torch", "torchvision", "torch_pruning", "safetensors", "sklearn", "onnx", "onnxscript", "nncf", "tensorboard",
)


def _print_error(message: str, prefix: str = "error:") -> None:
    """One line on stderr; the message is plain text (a path or value in square brackets is not Rich markup)."""
    Console(stderr=True, markup=False, highlight=False, soft_wrap=True).print(Text(prefix, style="bold red"), message)


def main() -> None:
    """Entry point: user mistakes end in one line on stderr and exit code 2, never a traceback."""
    try:
        app(prog_name="edgekd")
    except EdgeKDError as e:
        # raised in a DataLoader worker, the message carries the worker's traceback; its last line is ours
        message = (str(e).strip().splitlines()[-1].removeprefix("edgekd.errors.EdgeKDError: ")
                   if "DataLoader worker" in str(e) else str(e))
        if not hand_to_launcher(message):
            _print_error(message)
        sys.exit(2)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in TRAIN_MODULES:
            raise
        _print_error(
            f"this command needs the training side ({e.name} is not installed): install the train extra "
            "(pip install '.[train]' in a checkout); a device install runs bench, serve, val, predict and report"
        )
        sys.exit(2)
    except SystemExit as e:
        # typer makes Ctrl-C a silent exit 130; a launcher says it once
        if e.code == 130 and RANK_ERRORS_ENV not in os.environ:
            Console(stderr=True).print("interrupted")
        raise
