"""The bench report's rows: one row per runtime x precision x batch x threads on one machine, as
``bench.json`` stores them, and the comparisons every reader makes between rows of the same machine."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgekd.contracts.values import is_count, is_number
from edgekd.errors import EdgeKDError

BENCH_JSON = "bench.json"


def bench_row(runtime: str, precision: str, batch: int, threads: int | None, status: str,
              **fields: Any) -> dict[str, Any]:
    """A row with every field present; ``fields`` fill in what was measured."""
    row: dict[str, Any] = {
        "runtime": runtime,
        "precision": precision,
        "batch": batch,
        "threads": threads,
        "status": status,
        "p50_ms": None,
        "p90_ms": None,
        "p99_ms": None,
        "mean_ms": None,
        "iters": None,
        "throughput_ips": None,
        "size_mb": None,
        "accuracy": None,
        "speedup": None,
        "baseline": None,
        "artifact": None,
        "options": {},
        "machine": None,
        "export": None,  # the export dir, when several were timed together
        "emulated": False,
        "round_p50_ms": None,  # the p50 of each interleaved round
        "spread": None,  # (max - min) / median of those
        "unstable": False,  # the rounds still disagreed after a second measurement: noise, not a result
    }
    row.update(fields)
    return row


def machine_key(machine: Mapping[str, Any]) -> tuple:
    """Rows measured on the same machine share this key (rows merged from several machines are compared within one)."""
    return (machine.get("target"), machine.get("host"), machine.get("cpu"), machine.get("arch"))


def fastest(rows: Sequence[Mapping[str, Any]]) -> dict[int, dict[str, Any]]:
    """The measured (ok, not emulated, not unstable) row with the lowest p50 for each batch size; p99 breaks
    ties."""
    best: dict[int, dict[str, Any]] = {}
    for r in rows:
        if r["status"] != "ok" or r.get("emulated") or r.get("unstable"):
            continue
        cur = best.get(r["batch"])
        if cur is None or (r["p50_ms"], r["p99_ms"]) < (cur["p50_ms"], cur["p99_ms"]):
            best[r["batch"]] = dict(r)
    return dict(sorted(best.items()))


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``bench.json``."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        rows = doc["rows"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EdgeKDError(f"{path} is not a bench.json written by edgekd bench ({e})") from None
    problem = "'rows' is not a list" if not isinstance(rows, list) else next(
        (f"row {i}: {p}" for i, r in enumerate(rows, 1) if (p := row_problem(r))), None)
    if problem:
        raise EdgeKDError(f"{path} is not a bench.json written by edgekd bench ({problem})")
    return rows


_ROW_TEXT = ("runtime", "precision", "status")
_ROW_NUMBERS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput_ips", "size_mb", "accuracy", "speedup")


def row_problem(row: Any) -> str | None:
    """What a report could not show from a bench row (the fields every reader of bench.json relies on)."""
    if not isinstance(row, dict):
        return f"{type(row).__name__}, not an object"
    bad = [k for k in _ROW_TEXT if not isinstance(row.get(k), str)]
    bad += [k for k in ("batch",) if not is_count(row.get(k))]
    bad += [k for k in ("threads",) if row.get(k) is not None and not isinstance(row.get(k), int)]
    bad += [k for k in _ROW_NUMBERS if row.get(k) is not None and not is_number(row[k])]
    # what a measured row is
    bad += [k for k in ("p50_ms", "p99_ms") if row.get("status") == "ok" and row.get(k) is None]
    bad += [k for k in ("machine",) if not isinstance(row.get(k), dict)]
    return f"bad or missing {', '.join(bad)}" if bad else None
