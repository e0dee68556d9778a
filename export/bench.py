"""Latency benchmark of an export dir: each runtime x precision x batch x threads, timed on this machine.

Torch-free: this is what runs on the device (also as ``python -m edgekd.export.bench`` over SSH). Every runtime
comes from the registry (``edgekd.runtimes``); the PyTorch eager baseline is the one that runs the source run dir
and imports torch only when its row is measured, so a device without torch gets a "skipped" row instead.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import typer

from edgekd.contracts.bench_rows import bench_row, machine_key
from edgekd.contracts.manifest import PRECISIONS, load_manifest
from edgekd.contracts.rundir import WEIGHTS
from edgekd.contracts.values import csv_list, int_list
from edgekd.errors import EdgeKDError, one_line, run_command
from edgekd.progress import progress_bar
from edgekd.runtimes import RUNTIMES, Runtime, artifact_runtimes, open_artifact
from edgekd.runtimes.openvino import HINTS as OV_HINTS
from edgekd.settings import BENCH

MIN_TIMED_ITERS = 10  # a time-boxed run still gets enough samples for a p90


def latency_stats(samples_ms: Sequence[float] | np.ndarray) -> dict[str, float]:
    """p50/p90/p99 (linear interpolation between order statistics) and the mean of latencies in ms."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no latency samples")
    p50, p90, p99 = np.percentile(a, [50, 90, 99], method="linear")
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": float(a.mean())}


def time_calls(fn: Callable[[], Any], *, warmup: int, iters: int | None, seconds: float) -> np.ndarray:
    """Latency in ms of each call of ``fn`` after ``warmup`` untimed calls.

    ``iters`` calls if given, else as many as fit in ``seconds`` (at least ``MIN_TIMED_ITERS``).
    """
    for _ in range(warmup):
        fn()
    samples: list[int] = []
    deadline = time.perf_counter_ns() + int(seconds * 1e9)
    while (len(samples) < iters) if iters else (len(samples) < MIN_TIMED_ITERS or time.perf_counter_ns() < deadline):
        t0 = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t0)
    return np.asarray(samples, dtype=np.float64) / 1e6


ROUNDS = 5  # each configuration is timed in this many slices, interleaved with the others'
# a configuration whose round medians spread (max - min) by more than this fraction of their median was disturbed
# (another process, a frequency change): it is measured again, and flagged if it still is
TOLERANCE = 0.25
MIN_ROUND_ITERS = 3


@dataclass
class Timing:
    """One configuration's latencies in ms, by round, and whether they still disagreed after a second measurement."""

    rounds: list[np.ndarray]
    unstable: bool = False

    @property
    def samples(self) -> np.ndarray:
        return np.concatenate(self.rounds)

    @property
    def round_p50_ms(self) -> list[float]:
        return [float(np.median(r)) for r in self.rounds]

    @property
    def spread(self) -> float:
        """(max - min) / median of the round medians."""
        p50 = self.round_p50_ms
        return (max(p50) - min(p50)) / float(np.median(p50))


def time_interleaved(calls: Mapping[Any, Callable[[], Any]], *, warmup: int, iters: int | None, seconds: float,
                     rounds: int = ROUNDS, tolerance: float = TOLERANCE,
                     failed: Callable[[Any, BaseException], None] | None = None) -> dict[Any, Timing]:
    """Latencies of several configurations measured in ``rounds`` interleaved slices (the start rotating each
    round), so that a burst of load on a shared machine hits them all instead of one. A configuration whose rounds
    disagree by more than ``tolerance`` is measured again; if it still does, its ``Timing`` is ``unstable``.

    A call that raises drops its configuration, reported to ``failed``; the others go on.
    """
    live = dict(calls)
    for key, fn in list(live.items()):
        try:
            time_calls(fn, warmup=warmup, iters=1, seconds=0)
        except Exception as e:  # the runtime's own error types
            live.pop(key)
            if failed is not None:
                failed(key, e)
    if iters:  # a round's median needs a few calls: a short --iters gets fewer rounds (1: no spread to judge)
        rounds = max(1, min(rounds, iters // MIN_ROUND_ITERS))
    per_round = {"iters": -(-iters // rounds) if iters else None, "seconds": seconds / rounds}
    timings = _rounds(live, rounds, per_round, failed)
    unsteady = [k for k, t in timings.items() if t.spread > tolerance]
    retry = {k: live[k] for k in unsteady}
    second = _rounds(retry, rounds, per_round, failed)
    for key in unsteady:
        if key not in retry:  # failed when measured again
            live.pop(key)
            continue
        timings[key] = min(timings[key], second[key], key=lambda t: t.spread)
        timings[key].unstable = timings[key].spread > tolerance
    return {k: t for k, t in timings.items() if k in live}


def _rounds(calls: dict[Any, Callable[[], Any]], rounds: int, per_round: dict[str, Any],
            failed: Callable[[Any, BaseException], None] | None) -> dict[Any, Timing]:
    samples: dict[Any, list[np.ndarray]] = {k: [] for k in calls}
    order = list(calls)
    for r in range(rounds):
        for key in order[r % len(order):] + order[:r % len(order)] if order else []:
            if key not in calls:
                continue
            try:
                samples[key].append(time_calls(calls[key], warmup=0, **per_round))
            except Exception as e:
                calls.pop(key)
                if failed is not None:
                    failed(key, e)
    return {k: Timing(v) for k, v in samples.items() if k in calls}


def _cpu_model() -> str:
    """A human name for the CPU: /proc/cpuinfo on Linux (x86 and ARM boards), sysctl on macOS."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        fields = dict(
            (k.strip(), v.strip())
            for k, _, v in (line.partition(":") for line in cpuinfo.read_text(errors="replace").splitlines())
        )
        for key in ("model name", "Model", "Hardware", "cpu model"):
            if fields.get(key):
                return fields[key]
        board = Path("/sys/firmware/devicetree/base/model")
        if board.is_file():
            return board.read_text(errors="replace").strip("\x00\n ")
    if sys.platform == "darwin":
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                 timeout=5)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: CPU, architecture, usable cores, OS and runtime versions."""
    from edgekd import __version__

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = {"edgekd": __version__, "python": platform.python_version(), "numpy": np.__version__}
    for runtime in artifact_runtimes():
        v = RUNTIMES[runtime].installed_version()
        if v:
            versions[RUNTIMES[runtime].package] = v
    return {
        "host": platform.node(),
        "cpu": _cpu_model(),
        "arch": platform.machine(),
        "cores": usable,
        "os": f"{platform.system()} {platform.release()}",
        "versions": versions,
    }


def add_speedups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Set ``speedup`` (baseline p50 / row p50) and ``baseline`` on each row, within one machine, export, batch and
    threads.

    The baseline is the source-run runtime's FP32 (PyTorch eager) when it was measured, else the FP32 row of the
    first registered artifact runtime (ONNX Runtime).
    """
    order = [name for name, cls in RUNTIMES.items() if cls.source_run] + artifact_runtimes()
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((machine_key(r["machine"]), r.get("export"), r["batch"], r["threads"]), []).append(r)
    for group in groups.values():
        ok = {(r["runtime"], r["precision"]): r for r in group if r["status"] == "ok"}
        bases = [ok[(name, "fp32")] for name in order if (name, "fp32") in ok]
        # a baseline whose rounds disagreed would turn its noise into every row's speed-up: the next one is used
        base = next((b for b in bases if not b.get("unstable")), bases[0] if bases else None)
        for r in group:
            measured = base is not None and r["status"] == "ok"
            r["baseline"] = f"{base['runtime']} {base['precision']}" if base is not None else None
            r["speedup"] = round(base["p50_ms"] / r["p50_ms"], 3) if measured else None
    return rows


def _error_text(e: BaseException) -> str:
    if isinstance(e, EdgeKDError):
        return f"error: {e}"
    message = f": {one_line(e, first_line=True)}" if str(e).strip() else ""
    return f"error: {type(e).__name__}{message}"


def _source_run(export_dir: Path, manifest: Mapping[str, Any]) -> tuple[Path | None, str | None]:
    """The run dir the export came from (absolute, or relative to the export dir or cwd), or why it cannot be used."""
    if not manifest.get("source_run"):
        return None, "skipped: the manifest names no source run to load the PyTorch model from"
    p = Path(manifest["source_run"])
    for cand in ([p] if p.is_absolute() else [export_dir / p, p]):
        if (cand / WEIGHTS).is_file():
            return cand, None
    return None, f"skipped: source run {p} is not on this machine"


@contextlib.contextmanager
def _open(export_dir: Path, manifest: dict[str, Any], runtime: str, key: str | None, run_dir: Path | None,
          threads: int | None, verify: bool, options: dict[str, Any]) -> Iterator[Runtime]:
    """The loaded model for one configuration (a baseline: the source run); ImportError: the runtime is not
    installed."""
    if RUNTIMES[runtime].source_run:
        rt = RUNTIMES[runtime](run_dir, threads=threads)
    else:
        rt = open_artifact(export_dir, manifest, key, runtime=runtime, verify=verify, threads=threads, **options)
    try:
        yield rt
    finally:
        rt.close()


def _runs(runtime: str, precision: str, entry: Mapping[str, Any]) -> bool:
    """Whether ``runtime`` runs a manifest entry (written or dropped) of ``precision``."""
    return entry.get("format") in RUNTIMES[runtime].formats and entry.get("precision") == precision


def _plan(manifest: Mapping[str, Any], runtimes: Sequence[str],
          precisions: Sequence[str]) -> list[tuple[str, str, str | None, str | None]]:
    """(runtime, precision, artifact key, skip reason) to measure; a baseline has no key: it loads the source run."""
    dropped = manifest.get("dropped") or {}
    plan = []
    for runtime in runtimes:
        for precision in precisions:
            if RUNTIMES[runtime].source_run:
                if precision == "fp32":  # the eager baseline is FP32 only
                    plan.append((runtime, precision, None, None))
                continue
            keys = [k for k, a in manifest["artifacts"].items() if _runs(runtime, precision, a)]
            plan.extend((runtime, precision, k, None) for k in keys)
            if not keys:
                why = [f"{k} was dropped at export: {a.get('reason', 'no reason given')}" for k, a in dropped.items()
                       if _runs(runtime, precision, a)]
                plan.append((runtime, precision, None,
                             "skipped: " + ("; ".join(why) or f"no {runtime} {precision} artifact in this export")))
    return plan


MAX_BATCH = 4096  # a latency benchmark; larger batches only measure memory
MAX_THREADS = 1024  # far past any core count; a runtime asked for 100000 threads hangs creating them
MAX_INPUT_BYTES = 2**31  # the random input of one batch size


def _check_options(runtimes, precisions, batches, threads, warmup, iters, seconds, ov_hint, ov_streams) -> None:
    bad = [r for r in runtimes if r not in RUNTIMES]
    if bad or not runtimes:
        raise EdgeKDError(f"unknown runtime {', '.join(bad) or '(none given)'}; choose from {', '.join(RUNTIMES)}")
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad or not precisions:
        raise EdgeKDError(f"unknown precision {', '.join(bad) or '(none given)'}; choose from {', '.join(PRECISIONS)}")
    if not batches or any(not isinstance(b, int) or not 1 <= b <= MAX_BATCH for b in batches):
        raise EdgeKDError(f"batch sizes must be integers from 1 to {MAX_BATCH}, got {list(batches)}")
    if not threads or any(t is not None and (not isinstance(t, int) or not 1 <= t <= MAX_THREADS) for t in threads):
        raise EdgeKDError(
            f"threads must be integers from 1 to {MAX_THREADS} or None (the runtime's default), got {list(threads)}")
    if warmup < 0 or (iters is not None and iters < 1) or not 0 < seconds < math.inf:
        raise EdgeKDError(f"need warmup >= 0, iters >= 1 (or None) and seconds > 0; got {warmup}, {iters}, {seconds}")
    if ov_hint.upper() not in OV_HINTS:
        raise EdgeKDError(f"unknown OpenVINO hint {ov_hint!r}; choose from {', '.join(OV_HINTS)}")
    if ov_streams is not None and ov_streams < 1:
        raise EdgeKDError(f"OpenVINO streams must be >= 1, got {ov_streams}")


def run_bench(
    export_dir: str | Path | Sequence[str | Path],
    *,
    runtimes: Sequence[str] | None = None,
    precisions: Sequence[str] = BENCH.precisions,
    batches: Sequence[int] = BENCH.batches,
    threads: Sequence[int | None] = (None,),
    warmup: int = BENCH.warmup,
    iters: int | None = None,
    seconds: float = BENCH.seconds,
    ov_hint: str = BENCH.ov_hint,
    ov_streams: int | None = None,
    progress: bool = True,
    emulated: bool = False,
) -> list[dict[str, Any]]:
    """Time every requested configuration of an export dir on random input of the manifest's shape.

    Returns one row per (runtime, precision, threads, batch): latency percentiles, throughput, size, accuracy,
    speed-up over the baseline, the machine, and a status ("ok", "skipped: why", "error: what"). ``emulated``
    marks rows measured under an emulator (e.g. QEMU), which report that the artifact runs, not device speed.

    Several export dirs (of the same input shape) are timed in the same interleaved rounds, so that their latencies
    compare fairly on a busy machine; each row then names its ``export`` (as given), and its speed-up is over that
    export's own baseline.
    """
    runtimes = list(RUNTIMES) if runtimes is None else list(runtimes)
    precisions, batches, threads = list(precisions), list(batches), list(threads)
    _check_options(runtimes, precisions, batches, threads, warmup, iters, seconds, ov_hint, ov_streams)
    dirs = [Path(d) for d in dir_list(export_dir)]
    if not dirs:
        raise EdgeKDError("no export dir to benchmark")
    manifests = [load_manifest(d) for d in dirs]
    shape = _input_shape(dirs, manifests)
    for b in batches:
        if b * math.prod(shape[1:]) * 4 > MAX_INPUT_BYTES:
            raise EdgeKDError(f"batch {b} of {'x'.join(map(str, shape[1:]))} inputs needs more than 2 GiB of input; "
                              "pass a smaller --batch")
    machine = machine_info()
    options = {"hint": ov_hint.upper(), "streams": ov_streams}  # each runtime takes those it declares
    rng = np.random.default_rng(0)
    inputs = {b: rng.standard_normal((b, *shape[1:]), dtype=np.float32) for b in batches}
    configs = []  # (export dir, manifest, runtime, precision, key, skip reason, run dir, the row's fields)
    for directory, manifest in zip(dirs, manifests):
        for runtime, precision, key, skip in _plan(manifest, runtimes, precisions):
            entry = manifest["artifacts"].get(key, {}) if key else {}
            run_dir = None
            cls = RUNTIMES[runtime]
            if cls.source_run:
                run_dir, skip = _source_run(directory, manifest)
            fields = {
                "artifact": key,
                "size_mb": round(entry["size_bytes"] / 1e6, 6) if "size_bytes" in entry else None,
                "accuracy": entry.get("accuracy"),
                "options": {k: v for k, v in options.items() if k in cls.options},
                "machine": machine,
                "emulated": emulated,
                "export": str(directory) if len(dirs) > 1 else None,
            }
            if run_dir is not None:
                fields["size_mb"] = round((run_dir / WEIGHTS).stat().st_size / 1e6, 6)
                fields["accuracy"] = (manifest.get("eval") or {}).get("torch_accuracy")
            configs.append((directory, manifest, runtime, precision, key, skip, run_dir, fields))
    rows: dict[tuple[int, int, int], dict[str, Any]] = {}  # by (configuration, threads, batch): the report's order
    verified: set[tuple[Path, str | None]] = set()
    with progress_bar(progress) as bar:
        task = bar.add_task("bench", total=len(configs) * len(threads) * len(batches))
        for t, n_threads in enumerate(threads):
            with contextlib.ExitStack() as stack:  # every configuration of this thread count open at once
                opened = []
                for directory, manifest, runtime, precision, key, skip, run_dir, fields in configs:
                    rt, status = _open_config(stack, directory, manifest, runtime, key, run_dir, n_threads,
                                              (directory, key) not in verified, options, skip)
                    if rt is not None:
                        verified.add((directory, key))
                        if run_dir is not None:
                            fields = {**fields, "machine": {**machine, "versions": {
                                **machine["versions"], RUNTIMES[runtime].package: rt.version()}}}
                    opened.append((runtime, precision, rt, status, fields))
                for b, batch in enumerate(batches):
                    bar.update(task, description=f"batch {batch} threads {n_threads or 'auto'}: "
                                                 f"{len(opened)} configurations in interleaved rounds")
                    group = [bench_row(runtime, precision, batch, n_threads, status or "ok", **fields)
                             for runtime, precision, rt, status, fields in opened]
                    calls = {i: (lambda rt=rt, x=inputs[batch]: rt.run(x))
                             for i, (_, _, rt, _, _) in enumerate(opened) if rt is not None}

                    def failed(i: int, e: BaseException, group=group) -> None:
                        group[i]["status"] = _error_text(e)

                    timings = time_interleaved(calls, warmup=warmup, iters=iters, seconds=seconds, failed=failed)
                    for i, timing in timings.items():
                        _fill(group[i], timing, batch)
                    rows.update({(c, t, b): row for c, row in enumerate(group)})
                    bar.advance(task, len(group))
    return add_speedups([rows[k] for k in sorted(rows)])


def dir_list(given: str | Path | Sequence[str | Path]) -> list[str | Path]:
    """One export dir or several, as a list (what ``run_bench`` and ``run_remote`` take)."""
    return [given] if isinstance(given, (str, Path)) else list(given)


def _input_shape(dirs: Sequence[Path], manifests: Sequence[Mapping[str, Any]]) -> list[Any]:
    """The input shape every export dir takes: fixed apart from the batch, and the same for all."""
    for directory, manifest in zip(dirs, manifests):
        shape = manifest["input"]["shape"]
        if any(not isinstance(d, int) for d in shape[1:]):
            raise EdgeKDError(f"{directory}/manifest.json input shape {shape} is not fixed apart from the batch; "
                              "re-run `edgekd export`")
        if shape[1:] != manifests[0]["input"]["shape"][1:]:
            raise EdgeKDError(f"export dirs timed together must take the same input: {dirs[0]} takes "
                              f"{manifests[0]['input']['shape'][1:]}, {directory} takes {shape[1:]}")
    return manifests[0]["input"]["shape"]


def _open_config(stack: contextlib.ExitStack, export_dir: Path, manifest: dict[str, Any], runtime: str,
                 key: str | None, run_dir: Path | None, threads: int | None, verify: bool, options: dict[str, Any],
                 skip: str | None) -> tuple[Runtime | None, str | None]:
    """The loaded runtime of one configuration, kept open by ``stack``, or why it is not measured."""
    if skip is not None:
        return None, skip
    cls = RUNTIMES[runtime]
    try:
        return stack.enter_context(_open(export_dir, manifest, runtime, key, run_dir, threads, verify, options)), None
    except ImportError as e:
        hint = "" if cls.source_run else " (pip install 'edgekd[device]')"
        return None, f"skipped: {e.name or cls.package} not installed{hint}"
    except Exception as e:  # a broken artifact or runtime fails this configuration, not the bench
        return None, _error_text(e)


def _fill(row: dict[str, Any], timing: Timing, batch: int) -> None:
    """A row's latency fields from its timing: all rounds' samples, the rounds' spread, and the flag."""
    stats = latency_stats(timing.samples)
    row.update({k: round(v, 4) for k, v in stats.items()})
    row["iters"] = int(timing.samples.size)
    row["throughput_ips"] = round(batch * 1000.0 / stats["mean_ms"], 2)
    row["round_p50_ms"] = [round(v, 4) for v in timing.round_p50_ms]
    row["spread"] = round(timing.spread, 4)
    row["unstable"] = timing.unstable


# The measurement options of `edgekd bench` and of `python -m edgekd.export.bench` (what `edgekd bench --remote` runs
# on the device): one definition, turned into ``run_bench`` keywords by ``measurement_options`` and back into this
# command line by ``bench_argv``.
RuntimesOpt = typer.Option(
    ",".join(RUNTIMES),
    help=f"Comma-separated: {', '.join(RUNTIMES)} (torch: the PyTorch baseline, only where torch is installed).")
PrecisionsOpt = typer.Option(",".join(BENCH.precisions), help=f"Comma-separated: {', '.join(PRECISIONS)}.")
BatchOpt = typer.Option(",".join(map(str, BENCH.batches)), "--batch", help="Comma-separated batch sizes, e.g. 1,8,32.")
ThreadsOpt = typer.Option("auto", help="Comma-separated thread counts; auto = the runtime's default.")
WarmupOpt = typer.Option(BENCH.warmup, help="Warm-up calls before timing.")
ItersOpt = typer.Option(None, help="Timed calls per configuration (default: as many as fit in --seconds).")
SecondsOpt = typer.Option(BENCH.seconds, help="Time budget per configuration when --iters is not given.")
OvHintOpt = typer.Option(BENCH.ov_hint, help=f"OpenVINO performance hint: {' or '.join(OV_HINTS)}.")
OvStreamsOpt = typer.Option(None, help="OpenVINO inference streams.")


def measurement_options(runtimes: str, precisions: str, batch: str, threads: str, warmup: int, iters: int | None,
                        seconds: float, ov_hint: str, ov_streams: int | None) -> dict[str, Any]:
    """The command line's measurement options as ``run_bench`` keywords."""
    return {
        "runtimes": csv_list(runtimes),
        "precisions": csv_list(precisions),
        "batches": list(dict.fromkeys(int_list(batch, "--batch"))),
        "threads": [None if t == "auto" else int_list(t, "--threads")[0] for t in csv_list(threads)],
        "warmup": warmup,
        "iters": iters,
        "seconds": seconds,
        "ov_hint": ov_hint,
        "ov_streams": ov_streams,
    }


def bench_argv(options: Mapping[str, Any]) -> list[str]:
    """Command-line arguments of ``python -m edgekd.export.bench`` for ``run_bench`` keyword ``options``."""
    argv: list[str] = []
    for name, value in options.items():
        if name in ("runtimes", "precisions"):
            argv += ["--" + name, ",".join(value)]
        elif name == "batches":
            argv += ["--batch", ",".join(str(v) for v in value)]
        elif name == "threads":
            argv += ["--threads", ",".join("auto" if t is None else str(t) for t in value)]
        elif name in ("progress", "emulated"):
            if bool(value) != (name == "progress"):
                argv.append("--no-progress" if name == "progress" else "--emulated")
        elif name in ("warmup", "iters", "seconds", "ov_hint", "ov_streams"):
            if value is not None:
                argv += ["--" + name.replace("_", "-"), str(value)]
        else:
            raise EdgeKDError(f"unknown bench option {name!r}")
    return argv


def device_bench(
    export_dirs: list[Path] = typer.Argument(
        ..., help="Export dir from `edgekd export`; several are timed in the same interleaved rounds."),
    out: Optional[Path] = typer.Option(None, help="Write bench.json, bench.md and bench.png into this folder."),
    json: Optional[Path] = typer.Option(None, help="Write only bench.json, at this path."),
    title: Optional[str] = typer.Option(None, help="The report's title (default: edgekd bench: EXPORT_DIR's name)."),
    runtimes: str = RuntimesOpt,
    precisions: str = PrecisionsOpt,
    batch: str = BatchOpt,
    threads: str = ThreadsOpt,
    warmup: int = WarmupOpt,
    iters: Optional[int] = ItersOpt,
    seconds: float = SecondsOpt,
    ov_hint: str = OvHintOpt,
    ov_streams: Optional[int] = OvStreamsOpt,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars on stderr."),
    emulated: bool = typer.Option(False, "--emulated", help="Mark the rows as measured under an emulator (QEMU)."),
) -> None:
    """Benchmark an edgekd export dir on this machine (no torch needed)."""
    from edgekd.export import bench_report

    if (out is None) == (json is None):
        raise EdgeKDError("pass exactly one of --out (the whole report) and --json (bench.json only)")
    options = measurement_options(runtimes, precisions, batch, threads, warmup, iters, seconds, ov_hint, ov_streams)
    rows = run_bench(export_dirs, **options, progress=progress, emulated=emulated)
    title = title or f"edgekd bench: {', '.join(d.resolve().name for d in export_dirs)}"
    if out is not None:
        bench_report.write_report(rows, out, title)
    else:
        bench_report.write_json(rows, json, title)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m edgekd.export.bench`` (what ``edgekd bench --remote`` runs on the device)."""
    return run_command(device_bench, argv, "python -m edgekd.export.bench")


if __name__ == "__main__":
    sys.exit(main())
