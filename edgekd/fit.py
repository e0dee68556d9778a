"""`edgekd fit`: a latency budget on a device in, the most accurate pruned model that meets it out.

A NetAdapt-style search (Yang et al. 2018) in which every latency is measured, never estimated from MACs: each step
asks for ``step`` less latency than the last; for every prunable layer group it finds, by measuring the exported
candidate as it would ship (runtime, precision, batch, threads, here or over SSH with bench's runner), how many
channels that group must lose to get there; it ranks those candidates by held-out accuracy after a short KD
fine-tune from the unpruned model and keeps the best. Once the budget is met, the chosen model is recovered with KD
from the unpruned one, exported with the default INT8 accuracy bound, and benched again. Every measurement is cached
per device (``edgekd.latency``), and ``fit.json`` records every step, so a killed fit resumes where it stopped.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekd.contracts.rundir import FIT, FIT_EXPORT, PRUNED, read_description
from edgekd.contracts.values import csv_list
from edgekd.errors import EdgeKDError, one_line
from edgekd.fsutil import write_json
from edgekd.latency import LatencyCache, Target, candidate_key
from edgekd.progress import progress_bar
from edgekd.registries import MODELS
from edgekd.settings import FIT as DEFAULTS

if TYPE_CHECKING:
    from torch import nn

METRICS = ("p50", "p90")
HOLDOUT = 0.2  # the part of the training split that ranks candidates (the validation split stays unseen)


@dataclass
class Candidate:
    """One pruned model a step measured: which group lost channels, and what it gave."""

    group: str
    channels: int
    keep: int
    latency_ms: float
    p50_ms: float
    p90_ms: float
    unstable: bool
    cached: bool
    macs: int = 0
    params: int = 0
    accuracy: float | None = None
    ratio: float | None = None  # latency over the unpruned model's, timed in the same rounds


def _check(budget_ms: float, metric: str, step: float, finetune_steps: int, recover_epochs: int,
           channel_multiple: int, batch_size: int) -> None:
    if not budget_ms > 0:
        raise EdgeKDError(f"--budget-ms must be > 0, got {budget_ms}")
    if metric not in METRICS:
        raise EdgeKDError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if not 0 < step < 1:
        raise EdgeKDError(f"--step must be between 0 and 1 (the fraction of latency each step cuts), got {step}")
    for name, value in (("--finetune-steps", finetune_steps), ("--recover-epochs", recover_epochs)):
        if value < 0:
            raise EdgeKDError(f"{name} must be >= 0, got {value}")
    for name, value in (("--channel-multiple", channel_multiple), ("--batch-size", batch_size)):
        if value < 1:
            raise EdgeKDError(f"{name} must be >= 1, got {value}")


class _Search:
    """The state of one fit: the unpruned teacher, the data, the target, the cache and ``fit.json``."""

    def __init__(self, run_dir: Path, out: Path, target: Target, cache: LatencyCache, options: dict[str, Any],
                 log: Callable[[str], None]) -> None:
        import torch

        from edgekd.data import run_data
        from edgekd.rundir import layer_shapes, load_model

        self.run_dir, self.out, self.target, self.cache, self.options, self.log = \
            run_dir, out, target, cache, options, log
        self.teacher, self.desc = load_model(run_dir)
        self.reference_shapes = layer_shapes(self.teacher)  # what a relative measurement is keyed by besides its own
        self.example = torch.zeros(1, *self.desc["input_size"])
        bundle = run_data(self.desc)
        generator = torch.Generator().manual_seed(options["seed"])
        order = torch.randperm(len(bundle.raw_train), generator=generator).tolist()
        cut = max(1, int(len(order) * HOLDOUT))
        self.finetune_set = torch.utils.data.Subset(bundle.train_set(), order[cut:])
        self.holdout_set = torch.utils.data.Subset(bundle.calib_set(), order[:cut])
        self.record: dict[str, Any] = {}
        self.status: Callable[[str, str], None] = lambda _what, _figures: None  # the progress display's line
        self.phase = ""
        self._tmp = tempfile.TemporaryDirectory(prefix="edgekd-fit-")
        self._reference: Path | None = None

    def save(self) -> None:
        write_json(self.out / FIT, self.record)

    def show(self, figures: str, phase: str | None = None) -> None:
        """Update the progress display: the phase (which step, from what latency to what goal) and what it does."""
        self.phase = self.phase if phase is None else phase
        self.status(self.phase, figures)

    def measure(self, model: nn.Module, relative: bool = True, arch: str | None = None) -> Candidate:
        """The target's latency of ``model`` as exported, from the cache when this device measured that shape.

        ``relative``: timed in the same interleaved rounds as the unpruned model, and its latency is that ratio
        times the unpruned model's first reading, so that drift of the machine during the search does not decide
        which candidate wins (the unpruned model itself is timed alone, once). ``arch``: a model of another
        architecture than the run's (a student `--students` measures)."""
        import torch_pruning as tp

        from edgekd.rundir import layer_shapes

        macs, params = tp.utils.count_ops_and_params(model, self.example)
        desc = self.desc if arch is None else {**self.desc, "arch": arch}
        shapes, reference = layer_shapes(model), self.reference_shapes if relative else None
        timing = self.cache.get(candidate_key(desc, shapes, self.target, reference))
        cached = timing is not None
        if timing is None:
            timing = self._measure_export(model, relative, desc)
            if not timing["unstable"]:  # keyed again: a remote machine is known from its first measurement on
                self.cache.put(candidate_key(desc, shapes, self.target, reference), timing)
        latency = timing[f"{self.target.metric}_ms"]
        if relative:
            latency = timing["ratio"] * self.record["baseline"]["latency_ms"]
        return Candidate("", 0, 0, latency, timing["p50_ms"], timing["p90_ms"], timing["unstable"], cached,
                         int(macs), int(params), ratio=timing.get("ratio"))

    def export(self, run_dir: Path, out: Path, fp32_nodes: Sequence[str] = ()) -> Path:
        """``run_dir``'s artifact as the target serves it, to be timed: plain post-training quantization on
        ``calib_samples`` images (its latency, not its accuracy, is measured)."""
        from edgekd.export import export_run

        export_run(run_dir, out, formats=(self.target.format,), int8=self.target.precision == "int8",
                   calib_samples=self.options["calib_samples"], max_drop=None, fp32_nodes=fp32_nodes,
                   progress=False)
        return out

    def reference(self) -> Path:
        """The unpruned model's export, which relative measurements are timed against (made once per fit)."""
        if self._reference is None:
            self._reference = self.export(self.run_dir, Path(self._tmp.name) / "reference")
        return self._reference

    def _measure_export(self, model: nn.Module, relative: bool, desc: dict[str, Any]) -> dict[str, Any]:
        from edgekd.rundir import layer_shapes, save_model

        with tempfile.TemporaryDirectory(prefix="edgekd-fit-") as tmp:
            run = Path(tmp) / "run"
            save_model(run, model, {**desc, "layer_shapes": layer_shapes(model)})
            return self.target.measure(self.export(run, Path(tmp) / "export"),
                                       self.reference() if relative else None)

    def close(self) -> None:
        self._tmp.cleanup()

    def finetune(self, student: nn.Module, steps: int | None = None) -> tuple[nn.Module, float]:
        """``student`` after ``steps`` (default ``finetune_steps``) of the kd method from the unpruned model (the
        recovery's method, with its defaults), and its accuracy on the holdout."""
        import torch

        from edgekd.data import make_loader
        from edgekd.methods import build_method
        from edgekd.prune import accuracy

        student = copy.deepcopy(student).train()
        steps = self.options["finetune_steps"] if steps is None else steps
        if steps:
            method = build_method("kd", student, self.teacher, num_classes=self.desc["num_classes"]).train()
            optimizer = torch.optim.SGD(method.learnable_parameters(), lr=self.options["lr"], momentum=0.9,
                                        weight_decay=5e-4)
            loader = make_loader(self.finetune_set, self.options["batch_size"], shuffle=True,
                                 seed=self.options["seed"], drop_last=True)
            torch.manual_seed(self.options["seed"])
            done = 0
            while done < steps:
                for x, y in loader:
                    _, losses = method(x, y)
                    optimizer.zero_grad(set_to_none=True)
                    sum(losses.values()).backward()
                    optimizer.step()
                    done += 1
                    if done == steps:
                        break
        student.eval()
        return student, accuracy(student, self.holdout_loader())

    def holdout_loader(self) -> Any:
        from edgekd.data import make_loader

        return make_loader(self.holdout_set, 256, shuffle=False, seed=0)


def _smallest(search: _Search, model: nn.Module, multiple: int) -> nn.Module:
    """Every prunable group cut to ``multiple`` channels (or left, if it has no more): the fastest shape the
    search could reach."""
    from edgekd.prune import layer_groups, prune_group

    for group, channels in layer_groups(model, search.example).items():
        if channels > multiple:
            model = prune_group(model, search.example, group, multiple)
    return model


def _candidate(search: _Search, model: nn.Module, group: str, channels: int, goal_ms: float,
               multiple: int) -> tuple[Candidate, nn.Module, bool] | None:
    """The fewest channels ``group`` must lose for the measured latency to reach ``goal_ms``: the group cut to
    ``multiple`` first, then a binary search over the multiples in between. When even the deepest cut misses the
    goal, that cut is returned, marked as missing it (None: the group has no channels to lose)."""
    from edgekd.prune import prune_group

    options = list(range(multiple, channels, multiple))  # the kept counts to choose from, ascending
    if not options:
        return None
    best: tuple[Candidate, nn.Module, bool] | None = None
    low, high = 0, len(options) - 1
    while low <= high:
        mid = (low + high) // 2 if best is not None else 0  # the deepest cut first
        pruned = prune_group(model, search.example, group, options[mid])
        search.show(f"measuring {group}: {channels} -> {options[mid]} channels")
        measured = search.measure(pruned)
        measured.group, measured.channels, measured.keep = group, channels, options[mid]
        search.log(f"  {group}: {channels} -> {options[mid]} channels: {_ms(measured)}")
        if measured.latency_ms > goal_ms and best is None:
            return measured, pruned, False
        if measured.latency_ms <= goal_ms:
            best = (measured, pruned, True)
            low = mid + 1
        else:
            high = mid - 1
    return best


def _ms(c: Candidate) -> str:
    return f"{'~' if c.unstable else ''}{c.latency_ms:.3f} ms{' (cached)' if c.cached else ''}"


def fit(
    run_dir: str | Path,
    out: str | Path,
    budget_ms: float,
    *,
    metric: str = DEFAULTS.metric,
    batch: int = DEFAULTS.batch,
    threads: int | None = DEFAULTS.threads,
    runtime: str = DEFAULTS.runtime,
    precision: str = DEFAULTS.precision,
    step: float = DEFAULTS.step,
    finetune_steps: int = DEFAULTS.finetune_steps,
    recover_epochs: int = DEFAULTS.recover_epochs,
    lr: float = DEFAULTS.lr,
    batch_size: int = DEFAULTS.batch_size,
    channel_multiple: int = DEFAULTS.channel_multiple,
    seconds: float = DEFAULTS.seconds,
    calib_samples: int = DEFAULTS.calib_samples,
    students: Sequence[str] = DEFAULTS.students,
    student_epochs: int = DEFAULTS.student_epochs,
    layer_precision: bool = DEFAULTS.layer_precision,
    compare_uniform: bool = DEFAULTS.compare_uniform,
    seed: int = 0,
    remote: str | None = None,
    remote_python: str = "python3",
    ssh_port: int | None = None,
    identity: str | Path | None = None,
    ssh_options: tuple[str, ...] = (),
    cache_dir: str | Path | None = None,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Search, recover and export the most accurate pruned model of ``run_dir`` whose ``metric`` latency on the
    target is within ``budget_ms``; returns what ``OUT/fit.json`` holds. See the module docstring for the method.

    ``students``: registered architectures to choose from first, instead of the run's own model: each is measured at
    full width and at the smallest width the search could reach, those that cannot meet the budget are dropped, the
    rest are distilled from the run for ``student_epochs``, and the most accurate is fitted.

    ``compare_uniform``: each step also measures and fine-tunes the MACs-target prune of the unpruned model at the
    MACs of the step's choice, which the report draws beside the search's path.

    ``layer_precision``: before the final export, each layer of the recovered model is tried in FP32 in its ONNX
    Runtime INT8 artifact and kept so where the whole model measures faster (``_layer_precision``).

    ``log`` receives a line per measurement and step; ``progress`` draws a status line on stderr (which step, which
    candidate, the latency so far) and prints those lines above it."""
    run_dir, out = Path(run_dir), Path(out)
    _check(budget_ms, metric, step, finetune_steps, recover_epochs, channel_multiple, batch_size)
    if student_epochs < 1:
        raise EdgeKDError(f"--student-epochs must be >= 1, got {student_epochs}")
    if layer_precision and (runtime, precision) != ("ort", "int8"):
        raise EdgeKDError("--layer-precision chooses which layers of the ONNX Runtime INT8 artifact stay FP32; it "
                          "needs --runtime ort --precision int8")
    students = list(dict.fromkeys(csv_list(students) if isinstance(students, str) else students))
    for name in students:
        MODELS.check(name)
    read_description(run_dir)
    target = Target(runtime, precision, batch, threads, metric, seconds, remote, remote_python, ssh_port, identity,
                    tuple(ssh_options))
    previous = _previous(out, resume)
    log = log or (lambda _line: None)
    options = {"finetune_steps": finetune_steps, "lr": lr, "batch_size": batch_size, "seed": seed,
               "calib_samples": calib_samples, "layer_precision": layer_precision, "compare_uniform": compare_uniform}
    if previous is not None:  # the resumed fit's own settings, whatever was passed now
        budget_ms, step, channel_multiple = (previous["budget_ms"], previous["options"]["step"],
                                             previous["options"]["channel_multiple"])
        recover_epochs = previous["options"]["recover_epochs"]
        options = {k: previous["options"].get(k, v) for k, v in options.items()}  # an older fit: today's defaults
        students = previous["options"].get("students", [])
        student_epochs = previous["options"].get("student_epochs", student_epochs)
        target = Target(**{**{k: v for k, v in previous["target"].items() if k != "machine"},
                           "ssh_options": tuple(previous["target"]["ssh_options"])})
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    with progress_bar(progress, stats=True, transient=True) as bar:
        if progress:
            log = _through(bar, log)
        task = bar.add_task("fit", total=None, stats="")
        record = previous or {
            "run": str(run_dir), "budget_ms": budget_ms, "target": {**asdict(target), "machine": None,
                                                                     "identity": str(identity) if identity else None},
            "options": {**options, "step": step, "recover_epochs": recover_epochs, "channel_multiple": channel_multiple,
                        "students": students, "student_epochs": student_epochs},
            "state": "choosing" if students else "searching", "steps": [],
        }
        write_json(out / FIT, record)  # from here on, a stopped fit resumes with --resume

        def search_of(directory: Path) -> _Search:
            search = _Search(directory, out, target, LatencyCache(cache_dir), options, log)
            search.status = lambda what, figures: bar.update(task, description=what, stats=figures)
            return search

        try:
            if record["state"] == "choosing":
                chooser = search_of(run_dir)
                try:
                    _choose(chooser, record, budget_ms, channel_multiple)
                finally:
                    chooser.close()
            search = search_of(Path(record["students"]["run"]) if students else run_dir)
        except EdgeKDError:
            if created:  # nothing was fitted yet: leave nothing behind
                shutil.rmtree(out, ignore_errors=True)
            raise
        search.record = record
        try:
            return _run(search, created and not students, budget_ms, step, channel_multiple, recover_epochs)
        finally:
            search.close()


def _choose(chooser: _Search, record: dict[str, Any], budget_ms: float, multiple: int) -> None:
    """Measure each student at full width and at the smallest width the search could reach (beside the run's
    model), drop those that cannot meet the budget, distil the rest from the run for a short schedule, and record the
    most accurate as the model the search fits."""
    from edgekd.contracts.rundir import FIT_STUDENTS, SUMMARY
    from edgekd.models import create_model

    options = record["options"]
    chooser.record = {}  # the run's own measurement, which the students' ratios are taken against
    chooser.show("measuring the run's model")
    base = chooser.measure(chooser.teacher, relative=False)
    chooser.record["baseline"], record["machine"] = asdict(base), chooser.target.machine
    chooser.log(f"{chooser.desc['arch']} (the run): {_ms(base)}")
    rows = []
    for name in options["students"]:
        chooser.show(f"measuring {name}", "choosing a student")
        try:
            model = create_model(name, chooser.desc["num_classes"]).eval()
            full = chooser.measure(model, arch=name)
            smallest = chooser.measure(_smallest(chooser, model, multiple), arch=name)
        except Exception as e:  # a student that cannot be built, pruned or exported at this input is one dropped
            rows.append({"name": name, "full_ms": None, "smallest_ms": None, "macs": None, "params": None,
                         "accuracy": None, "kept": False, "why": "dropped: it could not be measured ("
                         + (one_line(e) if isinstance(e, EdgeKDError) else f"{type(e).__name__}: {one_line(e)}") + ")"})
            chooser.log(f"{name}: {rows[-1]['why']}")
            continue
        row = {"name": name, "full_ms": full.latency_ms, "smallest_ms": smallest.latency_ms, "macs": full.macs,
               "params": full.params, "accuracy": None, "kept": smallest.latency_ms <= budget_ms}
        if not row["kept"]:
            row["why"] = (f"dropped: even with every layer group at {multiple} channels it measures "
                          f"{smallest.latency_ms:.3f} ms")
        else:
            row["why"] = "kept: " + ("meets the budget at full width" if full.latency_ms <= budget_ms else
                                     f"pruned it can reach {smallest.latency_ms:.3f} ms")
        chooser.log(f"{name}: {_ms(full)} at full width, {smallest.latency_ms:.3f} ms at its smallest; {row['why']}")
        rows.append(row)
    kept = [r for r in rows if r["kept"]]
    if not kept:
        raise EdgeKDError(f"the budget of {budget_ms:g} ms cannot be met by any of the students: "
                          + "; ".join(f"{r['name']} {r['smallest_ms']:.3f} ms at its smallest"
                                      if r["smallest_ms"] is not None
                                      else f"{r['name']} {r['why'].removeprefix('dropped: ')}" for r in rows)
                          + "; raise the budget or name smaller students")
    for row in kept:
        run = chooser.out / FIT_STUDENTS / row["name"]
        if not (run / SUMMARY).is_file():  # distilled already by a fit that was stopped later
            shutil.rmtree(run, ignore_errors=True)
            _distil(chooser, row["name"], run, options)
        row["accuracy"] = _final_accuracy(run)
        chooser.log(f"{row['name']}: accuracy {row['accuracy']:.4f} after {options['student_epochs']} epochs of KD")
    chosen = max(kept, key=lambda r: (r["accuracy"], -r["full_ms"]))
    for row in kept:
        row["why"] += "; the most accurate: fitted" if row is chosen else f"; less accurate than {chosen['name']}"
    record["students"] = {"reference": asdict(base), "candidates": rows, "chosen": chosen["name"],
                          "run": str(chooser.out / FIT_STUDENTS / chosen["name"])}
    record["state"] = "searching"
    chooser.log(f"fitting {chosen['name']} (accuracy {chosen['accuracy']:.4f})")
    write_json(chooser.out / FIT, record)


def _distil(chooser: _Search, name: str, run: Path, options: dict[str, Any]) -> None:
    """``name`` distilled (kd, the method's defaults) from the run's model on the run's data into ``run``."""
    from edgekd.config import load_config
    from edgekd.recover import taught_by
    from edgekd.train import run_training

    run_training(load_config(None, taught_by(chooser.run_dir, chooser.desc, run, {
        "model": name, "method": "kd", "epochs": options["student_epochs"], "batch_size": options["batch_size"],
        "seed": options["seed"]})), show_progress=False,
        callbacks=[_epochs_shown(chooser, options["student_epochs"], f"distilling {name} from {chooser.run_dir}")])


def _final_accuracy(run: Path) -> float:
    import json

    from edgekd.contracts.rundir import SUMMARY

    return float(json.loads((run / SUMMARY).read_text(encoding="utf-8"))["final_acc"])


def _through(bar: Any, log: Callable[[str], None]) -> Callable[[str], None]:
    """``log``, and each line printed above the progress display (a second console would tear it)."""
    def both(line: str) -> None:
        bar.console.print(line, markup=False, highlight=False, soft_wrap=True)
        log(line)
    return both


def _run(search: _Search, created: bool, budget_ms: float, step: float, channel_multiple: int,
         recover_epochs: int) -> dict[str, Any]:
    """The fit from the state ``fit.json`` is in: searching, then recovering, then exporting (or, for a budget the
    unpruned model meets, exporting it as it is)."""
    if search.record["state"] == "done":
        search.log(f"the fit in {search.out} is done already: {search.record['final']['export']}")
        return search.record
    if search.record["state"] == "searching":
        try:
            _search(search, budget_ms, step, channel_multiple)
        except EdgeKDError:
            if created and not search.record["steps"]:  # nothing to resume: leave nothing behind
                shutil.rmtree(search.out, ignore_errors=True)
            raise
    if search.record["state"] == "met as is":
        return _export_and_check(search, search.run_dir, budget_ms, search.log)
    if search.record["state"] == "recovering":
        _recover(search, recover_epochs)
    if search.record["state"] == "layer precision":
        _layer_precision(search)
    return _export_and_check(search, search.out, budget_ms, search.log)


def _previous(out: Path, resume: bool) -> dict[str, Any] | None:
    import json

    if not resume:
        if out.exists() and any(out.iterdir()):
            raise EdgeKDError(f"{out} already exists and is not empty; pass --resume to continue its fit, or choose "
                              "another --out")
        return None
    if not (out / FIT).is_file():
        raise EdgeKDError(f"--resume: {out / FIT} does not exist; start without --resume")
    return json.loads((out / FIT).read_text(encoding="utf-8"))


def _search(search: _Search, budget_ms: float, step: float, multiple: int) -> None:
    from edgekd.prune import accuracy, layer_groups
    from edgekd.rundir import layer_shapes, load_model, save_model

    record = search.record
    if not record["steps"]:
        search.show("", "measuring the unpruned model")
        base = search.measure(search.teacher, relative=False)
        base.accuracy = accuracy(search.teacher, search.holdout_loader())
        record["baseline"], record["machine"] = asdict(base), search.target.machine
        search.log(f"unpruned: {_ms(base)} (budget {budget_ms:g} ms)")
        if base.latency_ms <= budget_ms:
            record["state"] = "met as is"
            search.save()
            return
        search.show("", "measuring the smallest model the search can reach")
        smallest = search.measure(_smallest(search, search.teacher, multiple))
        record["smallest"] = asdict(smallest)
        if smallest.latency_ms > budget_ms:
            search.save()
            raise EdgeKDError(
                f"the budget of {budget_ms:g} ms cannot be met: the smallest candidate (every layer group at "
                f"{multiple} channels) measures {smallest.latency_ms:.3f} ms {search.target.metric}; raise the budget, "
                "lower --channel-multiple, or pick a smaller student")
        model, latency = search.teacher, base.latency_ms
        search.save()
    else:
        model, _ = load_model(search.out / PRUNED)
        latency = record["steps"][-1]["chosen"]["latency_ms"]
    while latency > budget_ms:
        goal = max(budget_ms, latency * (1 - step))
        number = len(record["steps"]) + 1
        search.log(f"step {number}: from {latency:.3f} ms to {goal:.3f} ms")
        search.show("", f"step {number}: {latency:.3f} -> {goal:.3f} ms (budget {budget_ms:g})")
        probed = [p for group, channels in layer_groups(model, search.example).items()
                  if (p := _candidate(search, model, group, channels, goal, multiple)) is not None]
        # no group reaching the goal alone (coarse channel multiples): the deepest cuts that are faster still count
        found = [(c, m) for c, m, met in probed if met]
        goal_met = bool(found)
        found = found or [(c, m) for c, m, _ in probed if c.latency_ms < latency]
        if not found:
            search.save()
            raise EdgeKDError(f"the budget of {budget_ms:g} ms cannot be met: no layer group can lose more channels "
                              f"and be faster; the best latency reached is {latency:.3f} ms {search.target.metric} "
                              f"({search.out / PRUNED} holds that model)")
        tuned = []
        for candidate, pruned in found:
            search.show(f"fine-tuning {candidate.group} -> {candidate.keep} channels "
                        f"({candidate.latency_ms:.3f} ms)")
            fine, candidate.accuracy = search.finetune(pruned)
            search.log(f"  {candidate.group} -> {candidate.keep}: holdout accuracy {candidate.accuracy:.4f}")
            tuned.append((candidate, fine))
        chosen, model = max(tuned, key=lambda f: (f[0].accuracy, -f[0].latency_ms))
        latency = chosen.latency_ms
        search.log(f"  kept {chosen.group} at {chosen.keep} channels: {_ms(chosen)}, accuracy {chosen.accuracy:.4f}")
        this = {"goal_ms": goal, "goal_met": goal_met, "candidates": [asdict(c) for c, _ in tuned],
                "chosen": asdict(chosen)}
        if search.options["compare_uniform"]:  # before the step is saved: a stopped fit redoes the whole step
            this["uniform"] = asdict(_uniform(search, chosen, multiple, number))
        save_model(search.out / PRUNED, model, {**search.desc, "layer_shapes": layer_shapes(model),
                                                "pruned": {"method": "fit", "source": str(search.run_dir)}})
        record["steps"].append(this)
        search.save()
    record["state"] = "recovering"
    search.save()


def _uniform(search: _Search, chosen: Candidate, multiple: int, number: int) -> Candidate:
    """What `edgekd prune --target-macs` (torch-pruning's global ranking, one importance for every group) makes of
    the unpruned model at the MACs of step ``number``'s choice, measured the same way and fine-tuned as long as the
    choice has been (``number`` fine-tunes, one per step): the comparison the report draws beside the search."""
    from edgekd.prune import prune_model

    fraction = chosen.macs / search.record["baseline"]["macs"]
    search.show(f"the --target-macs prune at {fraction:.2f} of the MACs, for comparison")
    model = prune_model(search.teacher, method="structured", example_input=search.example, target_macs=fraction,
                        channel_multiple=multiple)
    uniform = search.measure(model)
    uniform.group = f"--target-macs {fraction:.3f}"
    _, uniform.accuracy = search.finetune(model, number * search.options["finetune_steps"])
    search.log(f"  for comparison, {uniform.group}: {_ms(uniform)}, accuracy {uniform.accuracy:.4f}")
    return uniform


def _epochs_shown(search: _Search, epochs: int, phase: str) -> Any:
    """A trainer callback that puts a training's epochs on the fit's progress display (the trainer's own bar
    would be a second live display)."""
    from edgekd.engine.callbacks import Callback

    class Epochs(Callback):
        def on_epoch_start(self, trainer: Any) -> None:
            search.show(f"epoch {trainer.epoch + 1}/{epochs}", phase)

    return Epochs()


def _recover(search: _Search, epochs: int) -> None:
    """KD from the unpruned model into OUT, started from the searched model (OUT/pruned), as `prune` recovers; a
    recovery that was stopped after its first checkpoint resumes from it."""
    from edgekd.config import load_config
    from edgekd.contracts.rundir import CHECKPOINT, DESCRIPTION, WEIGHTS
    from edgekd.recover import recovery_overrides
    from edgekd.train import run_training

    out = search.out
    if epochs:
        overrides = recovery_overrides(search.run_dir, search.desc, out, {
            "method": "kd", "lr": search.options["lr"], "warmup_epochs": 0, "epochs": epochs,
            "batch_size": search.options["batch_size"], "seed": search.options["seed"],
            "resume": (out / CHECKPOINT).is_file() or None})
        shown = _epochs_shown(search, epochs, f"recovering with KD from {search.run_dir}")
        run_training(load_config(None, overrides), show_progress=False, callbacks=[shown])
    else:  # the searched model as it is
        for name in (WEIGHTS, DESCRIPTION):
            shutil.copy2(out / PRUNED / name, out / name)
    search.record["state"] = "layer precision" if search.options["layer_precision"] else "exporting"
    search.save()


PRECISION_GAIN = 0.03  # a layer stays FP32 only when the whole model then measures at least this much faster


def _layer_precision(search: _Search) -> None:
    """For each Conv/Gemm/MatMul of the recovered model in graph order: its ONNX Runtime INT8 artifact with that
    layer (and those kept before it) in FP32, timed beside the artifact without it; the layer stays FP32 when the
    model is ``PRECISION_GAIN`` faster and the reading is stable. INT8 layers with few channels, or depthwise
    ones, can be slower than FP32 (their quantize and dequantize cost more than the integer arithmetic saves)."""
    import onnx

    from edgekd.export.formats.onnx import OnnxFormat, quantizable_nodes

    work = Path(search._tmp.name)

    def artifact(nodes: list[str], name: str) -> Path:
        shutil.rmtree(work / f"precision-{name}", ignore_errors=True)
        return search.export(search.out, work / f"precision-{name}", nodes)

    search.show("every layer INT8", "choosing each layer's precision")
    current = artifact([], "int8")
    layers = quantizable_nodes(onnx.load(str(current / OnnxFormat.files["int8"][0])).graph.node)
    kept: list[str] = []
    tried = []
    for number, node in enumerate(layers, 1):
        search.show(f"{node} in FP32 ({number}/{len(layers)})")
        candidate = artifact([*kept, node], str(number))
        timing = search.target.measure(candidate, current)
        faster = timing["ratio"] <= 1 - PRECISION_GAIN and not timing["unstable"]
        tried.append({"node": node, "ratio": timing["ratio"], "unstable": timing["unstable"], "fp32": faster})
        search.log(f"  {node} in FP32: {'~' if timing['unstable'] else ''}{timing['ratio']:.3f}x the model's "
                   f"latency{': kept in FP32' if faster else ''}")
        if faster:
            kept.append(node)
            current, candidate = candidate, current
        shutil.rmtree(candidate)
    search.record["layer_precision"] = {"tried": tried, "fp32_nodes": kept}
    search.log(f"layers kept in FP32 for speed: {', '.join(kept) or 'none'}")
    search.record["state"] = "exporting"
    search.save()


QAT_EPOCHS = 2  # when the INT8 artifact misses the accuracy bound: the exporter's own last remedy, this long
MEASUREMENTS = 3  # an over-budget final measurement is taken this many times in all, and the median used


def _export_and_check(search: _Search, model_dir: Path, budget_ms: float, log: Callable[[str], None]) -> dict:
    """Export ``model_dir`` with the default accuracy bound (and, if INT8 misses it, again with the exporter's
    quantization-aware fine-tune), bench the artifact the target serves, and say whether it meets the budget."""
    from edgekd.export import export_run

    target, export = search.target, search.out / FIT_EXPORT
    key = f"{target.format}-{target.precision}"
    for qat_epochs in (0, QAT_EPOCHS) if target.precision == "int8" else (0,):
        if export.exists():  # a resumed fit, or the second try, re-exports: the earlier export may be partial
            shutil.rmtree(export)
        search.show(f"{key}{f' with {qat_epochs} QAT epochs' if qat_epochs else ''}", f"exporting {model_dir}")
        manifest = export_run(model_dir, export, formats=(target.format,), int8=target.precision == "int8",
                              qat_epochs=qat_epochs, progress=False,
                              fp32_nodes=(search.record.get("layer_precision") or {}).get("fp32_nodes", ()))
        if key in manifest["artifacts"]:
            break
        log(f"the {key} artifact missed the export's accuracy bound; exporting again with {QAT_EPOCHS} epochs of "
            "quantization-aware fine-tuning")
    else:
        why = "; ".join(manifest.get("notes") or []) or "it was not written"
        raise EdgeKDError(f"the fitted model's {key} artifact missed the export's accuracy bound even after "
                          f"quantization-aware fine-tuning ({why}); the fitted run dir is {model_dir}: export it with "
                          "a looser `edgekd export --max-drop`, or fit to a larger budget")
    # a pruned model is timed beside the unpruned one: the ratio says whether a miss is the model or the machine
    reference = None if model_dir == search.run_dir else search.reference()
    search.show(str(export), "measuring the export")
    measured = [target.measure(export, reference)]
    if measured[0][f"{target.metric}_ms"] > budget_ms:  # over budget: measured again before it is believed
        measured += [target.measure(export, reference) for _ in range(MEASUREMENTS - 1)]
    measured.sort(key=lambda t: t[f"{target.metric}_ms"])
    timing = measured[len(measured) // 2]
    latency = timing[f"{target.metric}_ms"]
    record = search.record
    record["final"] = {**timing, "latency_ms": latency, "meets_budget": latency <= budget_ms,
                       "measurements": [t[f"{target.metric}_ms"] for t in measured],
                       "accuracy": manifest["artifacts"][key]["accuracy"], "export": str(export),
                       "qat_epochs": qat_epochs,
                       "fp32_nodes": (manifest["artifacts"][key].get("quantization") or {}).get("fp32_nodes", [])}
    if reference is not None and latency > budget_ms:
        base, now = record["baseline"]["latency_ms"], timing[f"reference_{target.metric}_ms"]
        if timing["ratio"] * base <= budget_ms:
            log(f"the unpruned model now measures {now:.3f} ms against {base:.3f} ms when the budget was set: timed "
                f"together, the fitted model is {timing['ratio']:.3f}x of it, within the budget's "
                f"{budget_ms / base:.3f}x; the machine is slower, not the model")
    record["state"] = "done"
    search.save()
    log(f"final {key}: {latency:.3f} ms {target.metric} ({'within' if latency <= budget_ms else 'OVER'} the "
        f"{budget_ms:g} ms budget), accuracy {record['final']['accuracy']:.4f}")
    return record
