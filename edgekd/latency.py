"""What `edgekd fit` measures and remembers: the target (an artifact as it will be served, here or over SSH) and a
per-device table of measured latencies, so a second fit on the same device measures only shapes it has not seen.

Torch-free: the measurement is `edgekd bench`'s own (``run_bench`` locally, ``run_remote`` on the device).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekd.contracts.bench_rows import machine_key
from edgekd.errors import EdgeKDError
from edgekd.fsutil import write_json

CACHE_ENV = "EDGEKD_CACHE"  # the folder of edgekd's caches (default ~/.cache/edgekd)
CACHE_FILE = "latency.json"


@dataclass
class Target:
    """The configuration a budget is measured in: runtime, precision, batch, threads and percentile, on this
    machine or on ``remote`` (``user@host[:path]``) through bench's SSH runner."""

    runtime: str
    precision: str
    batch: int
    threads: int | None
    metric: str
    seconds: float
    remote: str | None = None
    remote_python: str = "python3"
    ssh_port: int | None = None
    identity: str | Path | None = None
    ssh_options: tuple[str, ...] = ()  # ``-o Key=Value`` settings (a pinned known_hosts file, say)
    machine: dict[str, Any] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        from edgekd.contracts.manifest import PRECISIONS
        from edgekd.runtimes import artifact_runtimes

        if self.runtime not in artifact_runtimes():
            raise EdgeKDError(f"--runtime must be one of {', '.join(artifact_runtimes())}, got {self.runtime!r}")
        if self.precision not in PRECISIONS:
            raise EdgeKDError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.batch < 1 or (self.threads is not None and self.threads < 1) or not self.seconds > 0:
            raise EdgeKDError("--batch and --threads must be >= 1 and --seconds > 0")
        if self.remote:
            from edgekd.export.remote import check_remote_options

            check_remote_options(self.remote, self.ssh_port, self.identity)
        else:
            from edgekd.export.bench import machine_info

            self.machine = machine_info()

    @property
    def format(self) -> str:
        """The export format the runtime loads (ONNX Runtime: onnx; OpenVINO: its IR)."""
        from edgekd.runtimes import RUNTIMES

        return RUNTIMES[self.runtime].formats[0]

    def measure(self, export_dir: Path, reference: Path | None = None) -> dict[str, Any]:
        """p50/p90 of this configuration of ``export_dir``'s artifact, measured as `edgekd bench` measures. With a
        ``reference`` export, both are timed in the same interleaved rounds and ``ratio`` is the artifact's latency
        over the reference's (in ``metric``): a figure that a machine slowing down during a long search leaves
        alone, where the milliseconds move with it."""
        dirs = [export_dir] if reference is None else [export_dir, reference]
        options = {"runtimes": [self.runtime], "precisions": [self.precision], "batches": [self.batch],
                   "threads": [self.threads], "seconds": self.seconds, "progress": False}
        if self.remote:
            from edgekd.export.remote import run_remote

            rows = run_remote(self.remote, dirs, options, port=self.ssh_port, identity=self.identity,
                              remote_python=self.remote_python, ssh_options=self.ssh_options)
        else:
            from edgekd.export.bench import run_bench

            rows = run_bench(dirs, **options)
        found = [self._row(rows, None if reference is None else str(d)) for d in dirs]
        timing = {"p50_ms": found[0]["p50_ms"], "p90_ms": found[0]["p90_ms"], "spread": found[0].get("spread"),
                  "unstable": any(bool(r.get("unstable")) for r in found)}
        if reference is not None:
            ref = found[1]
            timing.update(reference_p50_ms=ref["p50_ms"], reference_p90_ms=ref["p90_ms"],
                          ratio=found[0][f"{self.metric}_ms"] / ref[f"{self.metric}_ms"])
        return timing

    def _row(self, rows: list[dict[str, Any]], export: str | None) -> dict[str, Any]:
        found = [r for r in rows if (r["runtime"], r["precision"], r["batch"], r.get("export")) ==
                 (self.runtime, self.precision, self.batch, export)]
        if len(found) != 1:
            raise EdgeKDError(f"the bench of {export or 'the export'} returned {len(found)} rows for {self.runtime} "
                              f"{self.precision} batch {self.batch}, not one")
        [row] = found
        if row["status"] != "ok":
            raise EdgeKDError(f"{self.runtime} {self.precision} batch {self.batch} could not be measured: "
                              f"{row['status']}")
        self.machine = row["machine"]
        return row


def candidate_key(description: dict[str, Any], shapes: dict[str, Any], target: Target,
                  reference: dict[str, Any] | None = None) -> str | None:
    """What a latency depends on: the network's shape, the configuration and the machine with its runtime versions,
    and for a ratio the shape of the reference it was timed against; None while the machine is not known yet (a
    remote one, before its first measurement)."""
    if target.machine is None:
        return None
    what = {"arch": description["arch"], "input": description["input_size"], "classes": description["num_classes"],
            "shapes": shapes, "runtime": target.runtime, "precision": target.precision, "batch": target.batch,
            "threads": target.threads, "machine": list(machine_key(target.machine)),
            "versions": target.machine.get("versions"), **({"reference": reference} if reference is not None else {})}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


class LatencyCache:
    """Measured latencies by ``candidate_key``, in ``CACHE_FILE`` under ``folder`` (``$EDGEKD_CACHE`` or
    ``~/.cache/edgekd``); a missing or unreadable file is an empty table."""

    def __init__(self, folder: str | Path | None = None) -> None:
        folder = folder or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "edgekd"
        self.path = Path(folder) / CACHE_FILE
        try:
            self.table: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.table = {}
        if not isinstance(self.table, dict):
            self.table = {}

    def get(self, key: str | None) -> dict[str, Any] | None:
        return None if key is None else self.table.get(key)

    def put(self, key: str | None, timing: dict[str, Any]) -> None:
        if key is None:
            return
        self.table[key] = timing
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path, self.table)
