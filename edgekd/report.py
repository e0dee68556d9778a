"""`edgekd report`: one self-contained HTML page for a run dir, an export dir, a bench or a whole demo dir.

The page must open anywhere, offline and years later, so it has no scripts, no external fonts or styles, and its
plots are PNGs inlined as data: URLs; a Content-Security-Policy forbids loading anything else. It reads only the
artifact files (``edgekd.contracts``), never the models, so it needs neither torch nor a runtime.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgekd.contracts.bench_rows import BENCH_JSON, read_rows
from edgekd.contracts.manifest import MANIFEST
from edgekd.contracts.rundir import CONFIG, DESCRIPTION, FIT, METRICS, SUMMARY
from edgekd.contracts.values import is_number
from edgekd.errors import EdgeKDError
from edgekd.export.bench_report import (
    EMULATED_NOTE,
    baseline_label,
    fastest_entries,
    format_label,
    machine_label,
    machine_name,
)
from edgekd.fsutil import write_text

DEFAULT_NAME = "report.html"
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
CSS = """
body{font-family:"DejaVu Sans",Helvetica,Arial,sans-serif;margin:24px auto;max-width:1200px;\
padding:0 16px;color:#1f2328}
h1{font-size:26px;margin-bottom:4px}\
h2{font-size:19px;margin-top:32px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
p.meta{color:#59636e;margin-top:0}p.empty{color:#59636e;font-style:italic}p.note{color:#59636e;font-size:13px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}th,td{border:1px solid #d0d7de;padding:4px 8px}
th{background:#f6f8fa;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.emulated td{background:#fff8e1;font-style:italic}tr.failed td{color:#a40e26}
img{max-width:100%;height:auto;display:block;margin:8px 0}
"""


@dataclass
class Run:
    """A training run dir (metrics + summary), or a pruned model dir (model.json with "pruned")."""

    rel: str
    summary: dict[str, Any]
    history: list[dict[str, Any]]
    model: dict[str, Any]
    recipe: dict[str, Any] = field(default_factory=dict)  # its config.yaml
    group: str = ""
    label: str = ""

    @property
    def pruned(self) -> dict[str, Any] | None:
        return self.model.get("pruned")


@dataclass
class Export:
    rel: str
    manifest: dict[str, Any]


@dataclass
class Bench:
    rel: str
    rows: list[dict[str, Any]]


@dataclass
class Fit:
    """An `edgekd fit` search: its fit.json."""

    rel: str
    record: dict[str, Any]


@dataclass
class Found:
    runs: list[Run] = field(default_factory=list)
    exports: list[Export] = field(default_factory=list)
    benches: list[Bench] = field(default_factory=list)
    fits: list[Fit] = field(default_factory=list)
    demo: list[dict[str, Any]] | None = None
    notes: list[str] = field(default_factory=list)


def build_report(root: Path, out: Path | None = None) -> Path:
    """Write the HTML report of everything under ``root`` to ``out`` (default ``root/report.html``)."""
    root = Path(root)
    if not root.is_dir():
        raise EdgeKDError(f"{root} is not a directory: pass a run dir, export dir or demo dir")
    found = discover(root)
    if not (found.runs or found.exports or found.benches or found.fits):
        raise EdgeKDError(f"nothing to report in {root}: pass a run dir, export dir or demo dir")
    out = Path(out) if out is not None else root / DEFAULT_NAME
    write_text(out, render_html(found, root))
    return out


# ---------------------------------------------------------------- discovery


def _visible(path: Path, root: Path) -> bool:
    """Skip hidden folders, among them the half-written ``.name.partial`` dirs of an atomic write."""
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def _rel(path: Path, root: Path) -> str:
    rel = path.relative_to(root).as_posix()
    return root.resolve().name if rel == "." else rel


def _read_json(path: Path, notes: list[str]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        notes.append(f"skipped {path}: not readable JSON ({e})")
        return None


def _read_history(path: Path, notes: list[str]) -> list[dict[str, Any]]:
    """Epoch rows of metrics.jsonl; a line cut short by a killed run is skipped and noted, not fatal."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, ValueError) as e:
        notes.append(f"skipped {path}: not readable ({e})")
        return []
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            notes.append(f"skipped line {i} of {path}: not JSON")
            continue
        if isinstance(row, dict) and "epoch" in row:
            if _history_row_ok(row):
                rows.append(row)
            else:
                notes.append(f"skipped line {i} of {path}: not an epoch row written by edgekd")
    return rows


def _history_row_ok(row: dict[str, Any]) -> bool:
    losses = row.get("losses", {})
    return (is_number(row["epoch"]) and isinstance(losses, dict) and all(is_number(v) for v in losses.values())
            and all(is_number(row[k]) for k in ("train_acc", "val_acc", "lr", "seconds", "images_per_s") if k in row))


def discover(root: Path) -> Found:
    """Every run dir, export dir, bench.json and demo-summary.json under ``root`` (recursively)."""
    found = Found()
    dirs = sorted(p for p in [root, *(d for d in root.rglob("*") if d.is_dir())] if _visible(p, root))
    for d in dirs:
        rel = _rel(d, root)
        summary_path, model_path = d / SUMMARY, d / DESCRIPTION
        model = _read_json(model_path, found.notes) if model_path.exists() else {}
        model = model if isinstance(model, dict) else {}
        if summary_path.exists() and (d / METRICS).exists():
            summary = _read_json(summary_path, found.notes)
            if isinstance(summary, dict):
                found.runs.append(Run(rel, summary, _read_history(d / METRICS, found.notes), model,
                                      _read_recipe(d / CONFIG, found.notes)))
        elif model.get("pruned"):
            summary = _read_json(summary_path, found.notes) if summary_path.exists() else None
            found.runs.append(Run(rel, summary if isinstance(summary, dict) else {}, [], model))
        if (d / MANIFEST).exists():
            manifest = _read_json(d / MANIFEST, found.notes)
            if (isinstance(manifest, dict) and isinstance(manifest.get("artifacts"), dict)
                    and all(isinstance(a, dict) for a in manifest["artifacts"].values())
                    and isinstance(manifest.get("eval") or {}, dict)):
                found.exports.append(Export(rel, manifest))
            elif manifest is not None:
                found.notes.append(f"skipped {d / MANIFEST}: no artifacts, or malformed (not written by edgekd export)")
        if (d / FIT).exists():
            record = _read_json(d / FIT, found.notes)
            if isinstance(record, dict) and _fit_ok(record):
                found.fits.append(Fit(rel, record))
            elif record is not None:
                found.notes.append(f"skipped {d / FIT}: not the record of an edgekd fit")
        if (d / BENCH_JSON).exists():
            try:
                found.benches.append(Bench(rel, read_rows(d / BENCH_JSON)))
            except EdgeKDError as e:
                found.notes.append(f"skipped {e}")
        if (d / "demo-summary.json").exists() and found.demo is None:
            demo = _read_json(d / "demo-summary.json", found.notes)
            if isinstance(demo, list) and all(isinstance(r, dict) for r in demo):
                found.demo = demo
            elif demo is not None:
                found.notes.append(f"skipped {d / 'demo-summary.json'}: not a list of rows")
    _label_runs(found.runs)
    return found


def _fit_ok(record: dict[str, Any]) -> bool:
    """The fields the frontier plot reads: a budget, a measured baseline and steps of measured candidates."""
    def measured(c: Any) -> bool:
        return isinstance(c, dict) and is_number(c.get("latency_ms"))

    steps = record.get("steps")
    return (is_number(record.get("budget_ms")) and measured(record.get("baseline")) and isinstance(steps, list)
            and all(isinstance(s, dict) and measured(s.get("chosen")) and isinstance(s.get("candidates"), list)
                    and all(measured(c) for c in s["candidates"]) for s in steps))


def _read_recipe(path: Path, notes: list[str]) -> dict[str, Any]:
    if not path.exists():
        return {}
    import yaml

    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        recipe = None
    if not isinstance(recipe, dict):
        notes.append(f"skipped {path}: not a mapping of training settings")
        return {}
    return recipe


def _method(run: Run) -> str:
    """What made the model: its method; for a pruned one, how it was pruned, and what recovered it."""
    how = run.pruned or run.summary.get("pruning")
    method = str(run.summary.get("method") or run.model.get("method") or "?")
    if not isinstance(how, dict):
        return method
    amount = (f"to {how['target_macs']:g} of its MACs" if is_number(how.get("target_macs"))
              else f"by {how.get('ratio', '?')}")
    pruned = f"pruned {amount} ({how.get('method', '?')})"
    return pruned if run.pruned else f"{pruned} + {method} recovery"


# settings that do not change what a run computes (or only its seed): runs that differ only in these are repeats
NOT_RECIPE = {"seed", "out", "resume", "device", "workers", "tensorboard", "compile", "teacher", "init"}


def _recipe_key(run: Run, key: str) -> str:
    value = run.recipe.get(key, run.summary.get(key)) if run.recipe else run.summary.get(key)
    return json.dumps(value, sort_keys=True)


def _arch(run: Run) -> str:
    return str(run.summary.get("model") or run.model.get("arch") or "?")


def _dataset(run: Run) -> str:
    return str(run.summary.get("dataset") or run.model.get("dataset") or "?")


def _label_runs(runs: list[Run]) -> None:
    """Group: the method, plus model/dataset where runs differ in them, plus the settings that differ between runs
    of one method (only repeats, such as other seeds, share a group and are averaged).

    Label: the group, plus the folder where several runs share it.
    """
    vary_arch = len({_arch(r) for r in runs}) > 1
    vary_data = len({_dataset(r) for r in runs}) > 1
    for r in runs:
        parts = [_method(r)] + ([_arch(r)] if vary_arch else []) + ([_dataset(r)] if vary_data else [])
        r.group = " · ".join(parts)
    # runs of one method but different recipes (epochs, lr, ...) are not repeats: the group names what differs
    by_group: dict[str, list[Run]] = {}
    for r in runs:
        by_group.setdefault(r.group, []).append(r)
    for members in by_group.values():
        keys = sorted({k for r in members for k in (r.recipe or {"epochs": 0})} - NOT_RECIPE)
        differ = [k for k in keys if len({_recipe_key(r, k) for r in members}) > 1]
        for r in members if differ else []:
            r.group += " · " + ", ".join(f"{k} {_recipe_key(r, k)}" for k in differ)
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.group] = counts.get(r.group, 0) + 1
    for r in runs:
        r.label = f"{r.group} · {r.rel}" if counts[r.group] > 1 else r.group


# ---------------------------------------------------------------- formatting


def _pct(v: Any) -> str:
    return f"{100 * v:.2f}%" if isinstance(v, (int, float)) and math.isfinite(v) else "—"


def _num(v: Any) -> str:
    """One decimal from 10 up, three significant digits below (a 40 kB model is 0.0400 MB, not 0.00)."""
    if not is_number(v) or not math.isfinite(v):
        return "—" if v is None else str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if abs(v) >= 10:
        return f"{v:,.1f}"
    return f"{v:#.3g}" if v else "0"


def _times(v: Any) -> str:
    return f"{v:.2f}×" if isinstance(v, (int, float)) else "—"


def _mb(size_bytes: Any) -> float | None:
    return size_bytes / 1e6 if isinstance(size_bytes, (int, float)) else None


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


Cell = tuple[str, bool]  # (text, numeric)


def _table(headers: Sequence[str], rows: Iterable[Sequence[Cell]], classes: Iterable[str] | None = None) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for row, cls in zip(rows, classes if classes is not None else itertools.repeat("")):
        cells = "".join(f'<td class="num">{_e(t)}</td>' if num else f"<td>{_e(t)}</td>" for t, num in row)
        attr = f' class="{_e(cls)}"' if cls else ""
        body.append(f"<tr{attr}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _kv_table(items: Iterable[tuple[str, str]]) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in items)
    return f"<table><tbody>{rows}</tbody></table>"


def _empty(text: str) -> str:
    return f'<p class="empty">{_e(text)}</p>'


# ---------------------------------------------------------------- plots


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _img(fig, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _colors(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _total_loss(row: Mapping[str, Any]) -> float:
    """The loss the trainer minimised: the sum of the named, already weighted, terms."""
    losses = row.get("losses") or {}
    values = [v for v in losses.values() if isinstance(v, (int, float))]
    return float(sum(values)) if values else math.nan


def _curves_plot(runs: Sequence[Run]) -> str:
    fig = _figure(11, 4.2)
    acc_ax, loss_ax = fig.subplots(1, 2)
    for run, color in zip(runs, _colors(len(runs))):
        epochs = [r["epoch"] for r in run.history]
        val = [100 * r["val_acc"] if isinstance(r.get("val_acc"), (int, float)) else math.nan for r in run.history]
        acc_ax.plot(epochs, val, marker="o", color=color, label=run.label)
        loss_ax.plot(epochs, [_total_loss(r) for r in run.history], marker="o", color=color, label=run.label)
    acc_ax.set(xlabel="epoch", ylabel="held-out top-1 accuracy (%)", title="Held-out accuracy per epoch")
    loss_ax.set(xlabel="epoch", ylabel="training loss (sum of terms)", title="Total training loss per epoch")
    for ax in (acc_ax, loss_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    acc_ax.legend(fontsize=8)
    return _img(fig, "training curves: held-out accuracy and total loss per epoch, one line per run")


def _accuracy_plot(runs: Sequence[Run]) -> str:
    """Best and final held-out accuracy per method; mean with a std whisker where several runs (seeds) share it."""
    import numpy as np

    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.group, []).append(r)
    names = list(groups)
    fig = _figure(min(12.0, 1.3 * len(names) + 3), 4.2)
    ax = fig.subplots()
    x = np.arange(len(names))
    for offset, key, color, label in (
        (-0.2, "best_acc", "tab:blue", "best"),
        (0.2, "final_acc", "tab:orange", "final"),
    ):
        means, stds = [], []
        for name in names:
            vals = [100 * r.summary[key] for r in groups[name] if isinstance(r.summary.get(key), (int, float))]
            means.append(statistics.fmean(vals) if vals else math.nan)
            stds.append(statistics.stdev(vals) if len(vals) > 1 else 0.0)
        bars = ax.bar(x + offset, means, 0.4, yerr=stds, capsize=4, color=color, label=label)
        ax.bar_label(bars, labels=[f"{m:.1f}" if math.isfinite(m) else "" for m in means], fontsize=8, padding=2)
    counts = [len(groups[n]) for n in names]
    ax.set_xticks(x, [f"{n}\n(n={c})" if c > 1 else n for n, c in zip(names, counts)], fontsize=9)
    ax.set(ylabel="held-out top-1 accuracy (%)", title="Accuracy per method", ylim=(0, 105),
           xlim=(-0.8, len(names) - 0.2))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=9, loc="lower right")
    return _img(fig, "accuracy per method: best and final held-out top-1")


@dataclass
class _BenchRow:
    source: str
    row: dict[str, Any]
    label: str


def _bench_rows(benches: Sequence[Bench]) -> list[_BenchRow]:
    """Every row with a plot label that names only what differs between rows (file, machine, threads, batch)."""
    flat = [(b.rel, r) for b in benches for r in b.rows]
    many_files = len(benches) > 1
    many_machines = len({machine_name(r.get("machine") or {}) for _, r in flat}) > 1
    many_threads = len({r.get("threads") for _, r in flat}) > 1
    out = []
    for rel, r in flat:
        label = format_label(r) + f" b{r['batch']}"
        if many_threads:
            label += f" t{r.get('threads') or 'auto'}"
        if many_machines:
            label = f"{machine_name(r.get('machine') or {})}: {label}"
        if many_files:
            label = f"{rel}: {label}"
        out.append(_BenchRow(rel, r, label + (" (emulated)" if r.get("emulated") else "")))
    return out


def _measured(rows: Sequence[_BenchRow]) -> list[_BenchRow]:
    return [b for b in rows if b.row.get("status") == "ok" and isinstance(b.row.get("p50_ms"), (int, float))]


def _latency_plot(rows: Sequence[_BenchRow]) -> str:
    import numpy as np

    fig = _figure(max(8.0, 0.9 * len(rows) + 4), 4.8)
    ax = fig.subplots()
    x = np.arange(len(rows))
    p50 = [b.row["p50_ms"] for b in rows]
    p99 = [b.row.get("p99_ms") if isinstance(b.row.get("p99_ms"), (int, float)) else math.nan for b in rows]
    for offset, values, color, name in ((-0.2, p50, "tab:blue", "p50"), (0.2, p99, "tab:orange", "p99")):
        bars = ax.bar(x + offset, values, 0.4, color=color, label=name)
        for bar, b in zip(bars, rows):
            if b.row.get("emulated"):
                bar.set_hatch("//")
                bar.set_edgecolor("black")
    ax.set_xticks(x, [b.label for b in rows], rotation=25, ha="right", fontsize=8)
    finite = [v for v in p50 + p99 if math.isfinite(v) and v > 0]
    if finite and max(finite) / min(finite) > 50:
        ax.set_yscale("log")
    title = "Latency per call by runtime and precision"
    if any(b.row.get("emulated") for b in rows):
        title += "\nhatched: emulated, not device latency"
    ax.set(ylabel="latency per call (ms)", title=title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=9)
    return _img(fig, "latency per runtime and precision: p50 and p99 bars")


def _scatter_plot(rows: Sequence[_BenchRow]) -> str:
    markers = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
    fig = _figure(9, 4.8)
    ax = fig.subplots()
    for i, (b, color) in enumerate(zip(rows, _colors(len(rows)))):
        ax.scatter(b.row["p50_ms"], 100 * b.row["accuracy"], s=70, marker=markers[i % len(markers)], color=color,
                   facecolors="none" if b.row.get("emulated") else color, label=b.label, clip_on=False)
    ax.set(xlabel="p50 latency per call (ms)", ylabel="top-1 accuracy (%)", title="Accuracy against latency")
    ax.margins(x=0.3, y=0.3)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _img(fig, "accuracy against p50 latency, one point per bench row")


def _fit_plot(fit: Fit) -> str:
    """Every candidate a fit measured (holdout accuracy after its short fine-tune against measured latency), the path
    of the chosen ones from the unpruned model, the MACs-target prunes at the same MACs (what a MACs target gives
    instead), the final export (held-out split) and the budget."""
    record = fit.record
    metric = (record.get("target") or {}).get("metric", "p50")
    fig = _figure(9, 4.8)
    ax = fig.subplots()
    candidates = [c for s in record["steps"] for c in s["candidates"] if is_number(c.get("accuracy"))]
    ax.scatter([c["latency_ms"] for c in candidates], [100 * c["accuracy"] for c in candidates], s=25,
               color="tab:gray", alpha=0.5, label="candidates (holdout, short fine-tune)")
    base = record["baseline"]
    path = [base, *(s["chosen"] for s in record["steps"])]
    points = [(c["latency_ms"], 100 * c["accuracy"]) for c in path if is_number(c.get("accuracy"))]
    if points:
        ax.plot(*zip(*points), "o-", color="tab:blue", label="unpruned, then each step's choice")
    uniform = [s["uniform"] for s in record["steps"] if isinstance(s.get("uniform"), dict)
               and is_number(s["uniform"].get("accuracy")) and is_number(s["uniform"].get("latency_ms"))]
    if uniform:
        ax.plot([u["latency_ms"] for u in uniform], [100 * u["accuracy"] for u in uniform], "s--", color="tab:orange",
                label="--target-macs prune at each choice's MACs")
    final = record.get("final") or {}
    if is_number(final.get("latency_ms")) and is_number(final.get("accuracy")):
        ax.scatter([final["latency_ms"]], [100 * final["accuracy"]], s=120, marker="*", color="tab:red", zorder=3,
                   label="final export (held-out split)")
    ax.axvline(record["budget_ms"], color="tab:red", linestyle="--", label=f"budget {record['budget_ms']:g} ms")
    ax.set(xlabel=f"measured {metric} latency (ms)", ylabel="top-1 accuracy (%)", title=f"edgekd fit: {fit.rel}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _img(fig, "a fit's measured candidates: accuracy against latency, with the budget")


# ---------------------------------------------------------------- sections


def _summary_section(found: Found, root: Path) -> str:
    trained = [r for r in found.runs if not r.pruned]
    items: list[tuple[str, str]] = [("Source", str(root))]
    if found.runs:
        methods = ", ".join(dict.fromkeys(_method(r) for r in found.runs))
        items.append(("Runs", f"{len(found.runs)} ({methods})"))
    scored = [r for r in trained if isinstance(r.summary.get("best_acc"), (int, float))]
    if scored:
        best = max(scored, key=lambda r: r.summary["best_acc"])
        items.append(("Best held-out accuracy", f"{_pct(best.summary['best_acc'])}: {best.label} ({best.rel})"))
    artifacts = [(e, k, a) for e in found.exports for k, a in e.manifest["artifacts"].items() if isinstance(a, dict)]
    if artifacts:
        items.append(("Export artifacts", f"{len(artifacts)} in {len(found.exports)} export dir(s)"))
        sized = [t for t in artifacts if isinstance(t[2].get("size_bytes"), (int, float))]
        if sized:
            e, key, a = min(sized, key=lambda t: t[2]["size_bytes"])
            torch_acc = (e.manifest.get("eval") or {}).get("torch_accuracy")
            items.append(("Smallest artifact",
                          f"{key}: {_num(_mb(a['size_bytes']))} MB, accuracy {_pct(a.get('accuracy'))}"
                          f" (PyTorch {_pct(torch_acc)})"))
    rows = [r for b in found.benches for r in b.rows]
    if rows:
        for f in fastest_entries(rows):
            vs = (f", {_times(f['speedup'])} {baseline_label(f['baseline'])}"
                  if f.get("baseline") and f.get("speedup") else "")
            items.append((f"Fastest at batch {f['batch']} on {f['machine']}",
                          f"{format_label(f)}: p50 {_num(f['p50_ms'])} ms{vs}"))
        emulated = sum(bool(r.get("emulated")) for r in rows)
        if emulated:
            items.append(("Emulated bench rows",
                          f"{emulated}: they show the artifact runs there, not the device's latency"))
    return "<h2>Summary</h2>" + _kv_table(items)


def _demo_cell(key: str, value: Any) -> Cell:
    """Accuracy as a percentage, speed-up as a ratio, other numbers as numbers, text as is."""
    if not is_number(value):
        return ("—" if value is None else str(value), False)
    if key == "accuracy":
        return (_pct(value), True)
    return (_times(value) if key == "speedup" else _num(value), True)


def _demo_section(demo: Sequence[Mapping[str, Any]]) -> str:
    headers = list(dict.fromkeys(k for r in demo for k in r))
    rows = [[_demo_cell(h, r.get(h)) for h in headers] for r in demo]
    classes = ["emulated" if r.get("emulated") else "" for r in demo]
    return "<h2>Demo summary</h2>" + _table(headers, rows, classes)


def _runs_table(runs: Sequence[Run]) -> str:
    headers = (
        "Run", "Method", "Model", "Teacher", "Dataset", "Epochs", "Best acc", "Final acc", "Params", "Train time (s)",
    )
    rows = []
    for r in runs:
        s = r.summary
        teacher = s.get("teacher") or r.model.get("teacher")
        if r.pruned:
            teacher = f"from {r.pruned.get('source', '?')}"
        rows.append([
            (r.rel, False), (r.label, False), (_arch(r), False), (teacher or "—", False), (_dataset(r), False),
            (_num(s.get("epochs", len(r.history) or None)), True), (_pct(s.get("best_acc")), True),
            (_pct(s.get("final_acc")), True), (_num(s.get("params")), True), (_num(s.get("seconds")), True),
        ])
    return _table(headers, rows)


def _exports_table(exports: Sequence[Export]) -> str:
    headers = ("Export dir", "Model", "Artifact", "Format", "Precision", "Size (MB)", "Accuracy", "PyTorch acc",
               "Agreement", "Max |Δlogit|")
    rows = []
    for e in exports:
        torch_acc = (e.manifest.get("eval") or {}).get("torch_accuracy")
        for key, a in e.manifest["artifacts"].items():
            a = a if isinstance(a, dict) else {}
            rows.append([
                (e.rel, False), (e.manifest.get("model", "?"), False), (key, False), (a.get("format", "?"), False),
                (str(a.get("precision", "?")).upper(), False), (_num(_mb(a.get("size_bytes"))), True),
                (_pct(a.get("accuracy")), True), (_pct(torch_acc), True), (_pct(a.get("agreement")), True),
                (_num(a.get("max_abs_diff")), True),
            ])
    return _table(headers, rows)


def _bench_table(rows: Sequence[_BenchRow]) -> str:
    headers = ("Bench", "Machine", "Format", "Batch", "Threads", "Status", "Size (MB)", "Accuracy", "p50 (ms)",
               "p90 (ms)", "p99 (ms)", "Mean (ms)", "Throughput (img/s)", "Speed-up")
    cells, classes = [], []
    for b in rows:
        r = b.row
        emulated = bool(r.get("emulated"))
        status = str(r.get("status", "?")) + (" (emulated: not device latency)" if emulated else "")
        vs = f" vs {baseline_label(r['baseline'])}" if r.get("baseline") and r.get("speedup") else ""
        cells.append([
            (b.source, False), (machine_label(r.get("machine") or {}), False),
            (format_label(r) + (" (emulated)" if emulated else ""), False), (_num(r.get("batch")), True),
            ("auto" if r.get("threads") is None else str(r["threads"]), True), (status, False),
            (_num(r.get("size_mb")), True), (_pct(r.get("accuracy")), True), (_num(r.get("p50_ms")), True),
            (_num(r.get("p90_ms")), True), (_num(r.get("p99_ms")), True), (_num(r.get("mean_ms")), True),
            (_num(r.get("throughput_ips")), True), (_times(r.get("speedup")) + vs, True),
        ])
        classes.append("emulated" if emulated else ("" if r.get("status") == "ok" else "failed"))
    note = f'<p class="note">{_e(EMULATED_NOTE)}</p>' if any(b.row.get("emulated") for b in rows) else ""
    return _table(headers, cells, classes) + note


def render_html(found: Found, root: Path) -> str:
    """The whole page; every piece of text from the files passes through html.escape."""
    from edgekd import __version__

    title = f"edgekd report: {root.resolve().name}"
    curve_runs = [r for r in found.runs if r.history]
    acc_runs = [r for r in found.runs if not r.pruned and isinstance(r.summary.get("best_acc"), (int, float))]
    bench_rows = _bench_rows(found.benches)
    measured = _measured(bench_rows)
    with_acc = [b for b in measured if isinstance(b.row.get("accuracy"), (int, float))]
    created = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_e(CSP)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="meta">{_e(f"{root} · written {created} by edgekd {__version__}")}</p>',
    ]
    if found.demo:
        parts.append(_demo_section(found.demo))
    parts.append(_summary_section(found, root))
    parts.append("<h2>Training curves</h2>")
    parts.append(_curves_plot(curve_runs) if curve_runs else _empty("No training metrics (metrics.jsonl) found."))
    parts.append("<h2>Accuracy per method</h2>")
    parts.append(_accuracy_plot(acc_runs) if acc_runs else _empty("No run summaries with an accuracy found."))
    parts.append("<h2>Latency per runtime and precision</h2>")
    parts.append(_latency_plot(measured) if measured else _empty("No measured bench rows (bench.json) found."))
    parts.append("<h2>Accuracy against latency</h2>")
    parts.append(_scatter_plot(with_acc) if with_acc else _empty("No measured bench rows with an accuracy found."))
    if found.fits:  # only where a fit ran: other folders keep the page's usual sections
        parts.append("<h2>Latency budget searches (edgekd fit)</h2>")
        parts.extend(_fit_plot(f) for f in found.fits)
    parts.append("<h2>Runs</h2>")
    parts.append(_runs_table(found.runs) if found.runs else _empty("No run dirs found."))
    parts.append("<h2>Export artifacts</h2>")
    parts.append(_exports_table(found.exports) if found.exports else _empty("No export dirs (manifest.json) found."))
    parts.append("<h2>Bench rows</h2>")
    parts.append(_bench_table(bench_rows) if bench_rows else _empty("No bench reports (bench.json) found."))
    if found.notes:
        parts.append("<h2>Skipped files</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in found.notes) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
