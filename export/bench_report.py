"""Writers for the bench report (rows: ``edgekd.contracts.bench_rows``): ``bench.json`` (rows), ``bench.md`` (one
table), ``bench.png``.

Rows from several machines (this one and an SSH target) merge into one report; each row carries its machine,
and "fastest" and "speed-up" are only ever computed between rows of the same machine.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgekd.contracts.bench_rows import BENCH_JSON, fastest, machine_key
from edgekd.errors import EdgeKDError
from edgekd.fsutil import atomic_path, write_text
from edgekd.fsutil import write_json as _write_json_file
from edgekd.runtimes import RUNTIMES

MD_HEADER = (
    "Format", "Batch", "Threads", "Status", "Size (MB)", "Accuracy", "p50 (ms)", "p99 (ms)", "Throughput (img/s)",
    "Speed-up",
)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
EMULATED_NOTE = (
    "Rows marked (emulated) ran under an emulator: they show that the artifact loads and gives output there; "
    "their times are not the device's latency."
)


UNSTABLE_MARK = "~"
UNSTABLE_NOTE = (
    f"{UNSTABLE_MARK}: each configuration is timed in interleaved rounds; the rounds of this one still disagreed by "
    "more than a quarter after a second measurement (the machine was busy), so its latency and speed-up are noise, "
    "not a result: measure again on a quiet machine."
)


def format_label(row: Mapping[str, Any]) -> str:
    """'ONNX Runtime INT8', 'PyTorch FP32', … (with the export dir's name when several were timed together)"""
    cls = RUNTIMES.get(row["runtime"])
    label = f"{cls.title if cls else row['runtime']} {row['precision'].upper()}"
    return f"{label} ({row['export']})" if row.get("export") else label


def machine_name(machine: Mapping[str, Any]) -> str:
    """The SSH target a row was measured through, else the host name."""
    return machine.get("target") or machine.get("host") or "?"


def machine_label(machine: Mapping[str, Any]) -> str:
    return (f"{machine_name(machine)}: {machine.get('cpu', '?')} ({machine.get('arch', '?')}, "
            f"{machine.get('cores', '?')} cores)")


def _machines(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The distinct machines of ``rows`` in order of first appearance."""
    seen: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        seen.setdefault(machine_key(r["machine"]), r["machine"])
    return list(seen.values())


def _rows_of(rows: Sequence[Mapping[str, Any]], machine: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    key = machine_key(machine)
    return [r for r in rows if machine_key(r["machine"]) == key]


def fastest_entries(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The fastest measured configuration per machine and batch size."""
    out = []
    for m in _machines(rows):
        for batch, r in fastest(_rows_of(rows, m)).items():
            out.append({
                "machine": machine_name(m), "batch": batch, "runtime": r["runtime"], "precision": r["precision"],
                "threads": r["threads"], "artifact": r["artifact"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
                "speedup": r["speedup"], "baseline": r["baseline"], "export": r.get("export"),
            })
    return out


def report_document(rows: Sequence[Mapping[str, Any]], title: str) -> dict[str, Any]:
    """The content of ``bench.json``."""
    machines = _machines(rows)
    return {
        "title": title,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machines[0] if len(machines) == 1 else None,
        "machines": machines,
        "fastest": fastest_entries(rows),
        "rows": [dict(r) for r in rows],
    }


def write_json(rows: Sequence[Mapping[str, Any]], path: str | Path, title: str) -> Path:
    """Write only ``bench.json`` (what a remote device sends back)."""
    _write_json_file(path, report_document(rows, title))
    return Path(path)


def merge_reports(local_rows: Sequence[Mapping[str, Any]],
                  remote_rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row list from two benches; each row keeps the machine it was measured on."""
    merged = [dict(r) for r in (*local_rows, *remote_rows)]
    missing = [format_label(r) for r in merged if not r.get("machine")]
    if missing:
        raise EdgeKDError(f"bench rows without machine info cannot be merged: {', '.join(missing)}; re-run the bench")
    return merged


def _ms(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def _num(v: float | None) -> str:
    """Two decimals, or three significant digits for values under 1 (a 40 kB model is 0.04 MB, not 0.00)."""
    if v is None:
        return "—"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.2f}" if abs(v) >= 1 else f"{v:#.3g}"


def baseline_label(baseline: str) -> str:
    """'ort fp32' -> 'ONNX Runtime FP32'."""
    runtime, precision = baseline.split()
    return format_label({"runtime": runtime, "precision": precision})


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _status(row: Mapping[str, Any]) -> str:
    s = row["status"]
    if s == "ok":
        return "✅ emulated" if row.get("emulated") else "✅"
    mark = "❎" if s.startswith("skipped") else "❌"
    return f"{mark} {s}"


def row_cells(row: Mapping[str, Any], with_machine: bool) -> list[str]:
    """One row's cells under ``MD_HEADER`` (with a leading machine cell when rows come from several machines)."""
    fmt = format_label(row) + (" (emulated)" if row.get("emulated") else "")
    acc = row.get("accuracy")
    unsure = UNSTABLE_MARK if row.get("unstable") else ""
    cells = [
        fmt,
        str(row["batch"]),
        "auto" if row["threads"] is None else str(row["threads"]),
        _status(row),
        _num(row.get("size_mb")),
        "—" if acc is None else f"{100 * acc:.2f}%",
        unsure + _ms(row.get("p50_ms")),
        _ms(row.get("p99_ms")),
        _num(row.get("throughput_ips")),
        "—" if row.get("speedup") is None else f"{unsure}{row['speedup']:.2f}×",
    ]
    if with_machine:
        cells.insert(0, machine_name(row["machine"]))
    return cells


def _versions(machine: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in (machine.get("versions") or {}).items())


def several_machines(rows: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the table needs a machine column."""
    return len(_machines(rows)) > 1


def machine_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """A Markdown bullet per machine: CPU, OS and runtime versions."""
    lines = []
    for m in _machines(rows):
        versions = _versions(m)
        lines.append(f"- Machine {machine_label(m)}, {m.get('os', '?')}" + (f"; {versions}" if versions else ""))
    return lines


def render_markdown(rows: Sequence[Mapping[str, Any]], title: str) -> str:
    """``bench.md``: the machine(s), one table with a row per configuration, and the fastest per batch size."""
    many = several_machines(rows)
    header = (("Machine",) if many else ()) + MD_HEADER
    lines = [f"# {title}", "", *machine_lines(rows)]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row_cells(r, many)) + " |" for r in rows]
    lines += ["", *summary_lines(rows)]
    return "\n".join(lines) + "\n"


def summary_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Markdown under the table: the fastest configuration per machine and batch, and how to read the numbers."""
    many = several_machines(rows)
    lines = []
    for f in fastest_entries(rows):
        where = f" on {f['machine']}" if many else ""
        if f["speedup"] is None:
            vs = ""
        elif f["baseline"] == f"{f['runtime']} {f['precision']}":
            vs = ", the baseline"
        else:
            vs = f", {f['speedup']:.2f}× {baseline_label(f['baseline'])}"
        threads = "auto" if f["threads"] is None else f["threads"]
        lines.append(
            f"- **Fastest{where} at batch {f['batch']}: {format_label(f)}** "
            f"(threads {threads}, p50 {_ms(f['p50_ms'])} ms{vs})."
        )
    if not any(r["status"] == "ok" and not r.get("emulated") for r in rows):
        lines.append("No configuration was measured on a device; see the Status column.")
    lines += [
        "",
        "p50/p99: latency percentiles of one synchronous call on random input; throughput: batch / mean latency. "
        "Speed-up: the baseline's p50 over the row's p50 at the same machine, batch and threads; the baseline is "
        "PyTorch eager FP32 where it was measured, else ONNX Runtime FP32.",
    ]
    if any(r.get("unstable") for r in rows):
        lines += ["", UNSTABLE_NOTE]
    if any(r.get("emulated") for r in rows):
        lines += ["", EMULATED_NOTE]
    return lines


def _plot_label(row: Mapping[str, Any], with_threads: bool, with_machine: bool) -> str:
    label = format_label(row)
    if with_threads:
        label += f" t{row['threads'] or 'auto'}"
    if with_machine:
        label = f"{machine_name(row['machine'])}\n{label}"
    return label + (" (emulated)" if row.get("emulated") else "")


def render_png(rows: Sequence[Mapping[str, Any]], title: str) -> bytes:
    """``bench.png``: p50 bars with p99 whiskers per configuration and batch; accuracy against p50 latency."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    ok = [r for r in rows if r["status"] == "ok"]
    with_threads = len({r["threads"] for r in ok}) > 1
    with_machine = len(_machines(ok)) > 1
    labels = list(dict.fromkeys(_plot_label(r, with_threads, with_machine) for r in ok))
    batches = sorted({r["batch"] for r in ok})
    fig = Figure(figsize=(max(11.0, 4.5 + 1.3 * len(labels)), 5.5), layout="constrained")
    bars_ax, acc_ax = fig.subplots(1, 2, width_ratios=[1.6, 1])
    fig.suptitle(title, fontsize=13)
    if not ok:
        for ax in (bars_ax, acc_ax):
            ax.text(0.5, 0.5, "no configuration was measured", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
    else:
        width = 0.8 / len(batches)
        cmap = matplotlib.colormaps["tab10"]
        for i, batch in enumerate(batches):
            sel = [r for r in ok if r["batch"] == batch]
            xs = [labels.index(_plot_label(r, with_threads, with_machine)) + (i - (len(batches) - 1) / 2) * width
                  for r in sel]
            p50 = [r["p50_ms"] for r in sel]
            whisker = [[0.0] * len(sel), [r["p99_ms"] - r["p50_ms"] for r in sel]]
            bars = bars_ax.bar(xs, p50, width, yerr=whisker, capsize=4, color=cmap(i), label=f"batch {batch}")
            for bar, r in zip(bars, sel):
                if r.get("emulated"):
                    bar.set_hatch("//")
        bars_ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=9)
        bars_ax.set_ylabel("latency per call (ms): bar p50, whisker p99")
        bars_ax.set_title("Latency by runtime and precision")
        p = [r["p99_ms"] for r in ok] + [r["p50_ms"] for r in ok]
        if min(p) > 0 and max(p) / min(p) > 50:
            bars_ax.set_yscale("log")
        bars_ax.grid(axis="y", alpha=0.3)
        bars_ax.legend(fontsize=9)
        smallest = [r for r in ok if r["batch"] == batches[0] and r.get("accuracy") is not None]
        if smallest:
            # a legend, not annotations: FP32 artifacts of one model share its accuracy, so their points sit in a row
            for j, r in enumerate(smallest):
                color = cmap(j % 10)
                acc_ax.scatter(r["p50_ms"], 100 * r["accuracy"], s=70, marker=MARKERS[j % len(MARKERS)],
                               color=color, facecolors="none" if r.get("emulated") else color,
                               label=_plot_label(r, with_threads, with_machine).replace("\n", " "))
            acc_ax.legend(fontsize=8, loc="best")
            acc_ax.set_xlabel(f"p50 latency at batch {batches[0]} (ms)")
            acc_ax.set_ylabel("top-1 accuracy (%)")
            acc_ax.set_title("Accuracy against latency")
            acc_ax.margins(x=0.35, y=0.3)
            acc_ax.set_xlim(left=0)
            acc_ax.grid(alpha=0.3)
        else:
            acc_ax.text(0.5, 0.5, "no accuracy recorded in the manifest", ha="center", va="center",
                        transform=acc_ax.transAxes)
            acc_ax.set_axis_off()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def write_report(rows: Sequence[Mapping[str, Any]], out_dir: str | Path, title: str) -> dict[str, Path]:
    """Write bench.json, bench.md and bench.png into ``out_dir``; all are rendered before any file is written."""
    if not rows:
        raise EdgeKDError("the bench produced no rows; pass at least one runtime, precision and batch size")
    out_dir = Path(out_dir)
    doc = json.dumps(report_document(rows, title), indent=2) + "\n"
    md = render_markdown(rows, title)
    png = render_png(rows, title)
    paths = {"json": out_dir / BENCH_JSON, "md": out_dir / "bench.md", "png": out_dir / "bench.png"}
    write_text(paths["json"], doc)
    write_text(paths["md"], md)
    with atomic_path(paths["png"]) as tmp:
        tmp.write_bytes(png)
    return paths
