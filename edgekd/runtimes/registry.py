"""The runtime registry: which runtime classes exist, which artifact each one runs, and opening one.

An artifact is run by the first registered runtime that lists its format, unless a runtime is named; the
artifact's first file is the one the runtime opens (``model.onnx``, ``model.xml``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekd.contracts.manifest import PRECISIONS, verify_artifact
from edgekd.contracts.registry import Registry
from edgekd.errors import EdgeKDError
from edgekd.runtimes.base import Runtime

RUNTIMES: Registry[type[Runtime]] = Registry("runtime", attribute="name")
register_runtime = RUNTIMES.register  # class decorator: bench, serve and the exporter's verification then know it


def artifact_runtimes() -> list[str]:
    """Names of the runtimes that run artifacts (not the source-run baseline), in registry order."""
    return [name for name, cls in RUNTIMES.items() if cls.formats]


def check_runtime_name(runtime: str | None) -> None:
    """A ``--runtime`` value this edgekd can run an artifact with (None: any)."""
    if runtime is not None and runtime not in artifact_runtimes():
        raise EdgeKDError(f"unknown runtime {runtime!r}; choose one of {', '.join(sorted(artifact_runtimes()))}")


def runtime_of(fmt: Any) -> str | None:
    """The runtime that runs artifacts of format ``fmt`` by default (None: a format no runtime here reads)."""
    return next((name for name in artifact_runtimes() if fmt in RUNTIMES[name].formats), None)


def select_artifact(manifest: dict[str, Any], runtime: str | None = None, precision: str | None = None) -> str:
    """The artifact key for a runtime/precision pair; with ``None`` the preferred available one (INT8 first,
    then the runtime registered first)."""
    check_runtime_name(runtime)
    names = artifact_runtimes()
    keys = [
        k
        for k, a in manifest["artifacts"].items()
        if runtime_of(a["format"]) is not None  # formats from a newer edgekd are skipped, not a crash
        and (runtime is None or a["format"] in RUNTIMES[runtime].formats)
        and (precision is None or a["precision"] == precision)
    ]
    if not keys:
        have = ", ".join(f"{k} ({a['format']})" for k, a in manifest["artifacts"].items())
        raise EdgeKDError(
            f"no artifact this edgekd can run for runtime={runtime or 'any'} precision={precision or 'any'}; "
            f"this export has: {have}"
        )
    order = {p: i for i, p in enumerate(PRECISIONS)}
    return min(keys, key=lambda k: (order.get(manifest["artifacts"][k]["precision"], 9),
                                    names.index(runtime_of(manifest["artifacts"][k]["format"]))))


def open_artifact(
    export_dir: str | Path, manifest: dict[str, Any], key: str, *, runtime: str | None = None, verify: bool = True,
    threads: int | None = None, **options: Any,
) -> Runtime:
    """Load artifact ``key`` of an export dir (sha256-checked first) with ``runtime``, or the one its format needs.

    ``options`` may hold any runtime's options; each runtime takes only those it declares.
    """
    if key not in manifest["artifacts"]:
        raise EdgeKDError(f"no artifact {key!r} in this export; it has: {', '.join(manifest['artifacts'])}")
    entry = manifest["artifacts"][key]
    name = runtime or runtime_of(entry["format"])
    if name is None or entry["format"] not in RUNTIMES[name].formats:
        raise EdgeKDError(
            f"artifact {key} is {entry['format']}, which {name or 'no runtime of this edgekd'} does not run")
    paths = verify_artifact(export_dir, manifest, key) if verify else [Path(export_dir) / f for f in entry["files"]]
    cls = RUNTIMES[name]
    return cls(paths[0], threads=threads, **{k: v for k, v in options.items() if k in cls.options})
