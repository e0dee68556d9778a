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
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekd.contracts.rundir import FIT, FIT_EXPORT, PRUNED, read_description
from edgekd.errors import EdgeKDError
from edgekd.fsutil import write_json
from edgekd.latency import LatencyCache, Target, candidate_key
from edgekd.progress import progress_bar
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
        from edgekd.rundir import load_model

        self.run_dir, self.out, self.target, self.cache, self.options, self.log = \
            run_dir, out, target, cache, options, log
        self.teacher, self.desc = load_model(run_dir)
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

    def measure(self, model: nn.Module, relative: bool = True) -> Candidate:
        """The target's latency of ``model`` as exported, from the cache when this device measured that shape.

        ``relative``: timed in the same interleaved rounds as the unpruned model, and its latency is that ratio
        times the unpruned model's first reading, so that drift of the machine during the search does not decide
        which candidate wins (the unpruned model itself is timed alone, once)."""
        import torch_pruning as tp

        from edgekd.rundir import layer_shapes

        macs, params = tp.utils.count_ops_and_params(model, self.example)
        shapes, reference = layer_shapes(model), layer_shapes(self.teacher) if relative else None
        timing = self.cache.get(candidate_key(self.desc, shapes, self.target, reference))
        cached = timing is not None
        if timing is None:
            timing = self._measure_export(model, relative)
            if not timing["unstable"]:  # keyed again: a remote machine is known from its first measurement on
                self.cache.put(candidate_key(self.desc, shapes, self.target, reference), timing)
        latency = timing[f"{self.target.metric}_ms"]
        if relative:
            latency = timing["ratio"] * self.record["baseline"]["latency_ms"]
        return Candidate("", 0, 0, latency, timing["p50_ms"], timing["p90_ms"], timing["unstable"], cached,
                         int(macs), int(params), ratio=timing.get("ratio"))

    def reference(self) -> Path:
        """The unpruned model's export, which relative measurements are timed against (made once per fit)."""
        from edgekd.export import export_run

        if self._reference is None:
            self._reference = Path(self._tmp.name) / "reference"
            export_run(self.run_dir, self._reference, formats=(self.target.format,),
                       int8=self.target.precision == "int8", calib_samples=self.options["calib_samples"],
                       max_drop=None, progress=False)
        return self._reference

    def _measure_export(self, model: nn.Module, relative: bool) -> dict[str, Any]:
        from edgekd.export import export_run
        from edgekd.rundir import layer_shapes, save_model

        with tempfile.TemporaryDirectory(prefix="edgekd-fit-") as tmp:
            run, export = Path(tmp) / "run", Path(tmp) / "export"
            save_model(run, model, {**self.desc, "layer_shapes": layer_shapes(model)})
            export_run(run, export, formats=(self.target.format,), int8=self.target.precision == "int8",
                       calib_samples=self.options["calib_samples"], max_drop=None, progress=False)
            return self.target.measure(export, self.reference() if relative else None)

    def close(self) -> None:
        self._tmp.cleanup()

    def finetune(self, student: nn.Module) -> tuple[nn.Module, float]:
        """``student`` after ``finetune_steps`` of the kd method from the unpruned model (the recovery's method,
        with its defaults), and its accuracy on the holdout."""
        import torch

        from edgekd.data import make_loader
        from edgekd.methods import build_method
        from edgekd.prune import accuracy

        student = copy.deepcopy(student).train()
        steps = self.options["finetune_steps"]
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

    ``log`` receives a line per measurement and step; ``progress`` draws a status line on stderr (which step, which
    candidate, the latency so far) and prints those lines above it."""
    run_dir, out = Path(run_dir), Path(out)
    _check(budget_ms, metric, step, finetune_steps, recover_epochs, channel_multiple, batch_size)
    read_description(run_dir)
    target = Target(runtime, precision, batch, threads, metric, seconds, remote, remote_python, ssh_port, identity,
                    tuple(ssh_options))
    previous = _previous(out, resume)
    log = log or (lambda _line: None)
    options = {"finetune_steps": finetune_steps, "lr": lr, "batch_size": batch_size, "seed": seed,
               "calib_samples": calib_samples}
    if previous is not None:  # the resumed fit's own settings, whatever was passed now
        budget_ms, step, channel_multiple = (previous["budget_ms"], previous["options"]["step"],
                                             previous["options"]["channel_multiple"])
        recover_epochs = previous["options"]["recover_epochs"]
        options = {k: previous["options"][k] for k in options}
        target = Target(**{**{k: v for k, v in previous["target"].items() if k != "machine"},
                           "ssh_options": tuple(previous["target"]["ssh_options"])})
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    with progress_bar(progress, stats=True, transient=True) as bar:
        if progress:
            log = _through(bar, log)
        search = _Search(run_dir, out, target, LatencyCache(cache_dir), options, log)
        task = bar.add_task("fit", total=None, stats="")
        search.status = lambda what, figures: bar.update(task, description=what, stats=figures)
        search.record = previous or {
            "run": str(run_dir), "budget_ms": budget_ms, "target": {**asdict(target), "machine": None,
                                                                     "identity": str(identity) if identity else None},
            "options": {**options, "step": step, "recover_epochs": recover_epochs,
                        "channel_multiple": channel_multiple},
            "state": "searching", "steps": [],
        }
        try:
            return _run(search, created, budget_ms, step, channel_multiple, recover_epochs)
        finally:
            search.close()


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
        save_model(search.out / PRUNED, model, {**search.desc, "layer_shapes": layer_shapes(model),
                                                "pruned": {"method": "fit", "source": str(search.run_dir)}})
        record["steps"].append({"goal_ms": goal, "goal_met": goal_met, "candidates": [asdict(c) for c, _ in tuned],
                                "chosen": asdict(chosen)})
        search.log(f"  kept {chosen.group} at {chosen.keep} channels: {_ms(chosen)}, accuracy {chosen.accuracy:.4f}")
        search.save()
    record["state"] = "recovering"
    search.save()


def _epochs_shown(search: _Search, epochs: int) -> Any:
    """A trainer callback that puts the recovery's epochs on the fit's progress display (the trainer's own bar
    would be a second live display)."""
    from edgekd.engine.callbacks import Callback

    class Epochs(Callback):
        def on_epoch_start(self, trainer: Any) -> None:
            search.show(f"epoch {trainer.epoch + 1}/{epochs}", f"recovering with KD from {search.run_dir}")

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
        run_training(load_config(None, overrides), show_progress=False, callbacks=[_epochs_shown(search, epochs)])
    else:  # the searched model as it is
        for name in (WEIGHTS, DESCRIPTION):
            shutil.copy2(out / PRUNED / name, out / name)
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
                              qat_epochs=qat_epochs, progress=False)
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
                       "qat_epochs": qat_epochs}
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
