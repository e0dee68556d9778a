"""The export dir contract (docs/design.md §3): ``manifest.json`` is all the server and the benchmark read.

Which runtime runs which artifact is the runtime registry's business (``edgekd.runtimes``); this module knows only
the file's shape, its checksums and its precisions.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from edgekd.contracts.preprocessing import PreprocessSpec
from edgekd.contracts.values import is_count, is_number
from edgekd.errors import EdgeKDError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
PRECISIONS = ("int8", "fp16", "fp32")  # an artifact's precision; the order is the server's preference
NUMERIC_FIELDS = ("size_bytes", "accuracy", "agreement", "max_abs_diff")  # what reports compute with


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def artifact_entry(export_dir: Path, files: list[str], **fields: Any) -> dict[str, Any]:
    """A manifest entry for ``files`` (relative to ``export_dir``) with their sha256 and total size."""
    sha = {f: sha256_file(export_dir / f) for f in files}
    size = sum((export_dir / f).stat().st_size for f in files)
    return {"files": files, "sha256": sha, "size_bytes": size, **fields}


def load_manifest(export_dir: str | Path) -> dict[str, Any]:
    """Read and sanity-check ``manifest.json``; errors say what the user should pass instead."""
    export_dir = Path(export_dir)
    path = export_dir / MANIFEST
    if not export_dir.is_dir():
        raise EdgeKDError(f"export dir {export_dir} does not exist; pass a folder written by `edgekd export`")
    if not path.is_file():
        raise EdgeKDError(f"{export_dir} has no {MANIFEST}; pass a folder written by `edgekd export`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EdgeKDError(f"{path} is not valid JSON ({e}); re-run `edgekd export`") from None
    problem = _structure_problem(manifest)
    if problem:
        raise EdgeKDError(f"{path} is not an edgekd manifest: {problem}; re-run `edgekd export`")
    return manifest


MAX_SIDE = 4096  # pixels: the benchmark and the server allocate whole batches of this input


def _structure_problem(manifest: Any) -> str | None:
    """What is wrong with the shape of a parsed manifest (None when the readers' assumptions hold)."""
    if not isinstance(manifest, dict):
        return f"the top level is {type(manifest).__name__}, not an object"
    for key, kind in (("artifacts", dict), ("input", dict), ("preprocessing", dict), ("class_names", list)):
        if key not in manifest:
            return f"it lacks {key!r}"
        if not isinstance(manifest[key], kind):
            return f"{key!r} is {type(manifest[key]).__name__}, not {'an object' if kind is dict else 'a list'}"
    shape = manifest["input"].get("shape")
    if not isinstance(shape, list) or len(shape) != 4:
        return f"input shape {shape!r} is not [batch, channels, height, width]"
    if (not (shape[0] is None or is_count(shape[0], 1)) or not is_count(shape[1], 4)
            or not all(is_count(v, MAX_SIDE) for v in shape[2:])):
        return f"input shape {shape!r} needs 1-4 channels and sides of 1-{MAX_SIDE} pixels"
    classes = manifest.get("num_classes", len(manifest["class_names"]))
    if not is_count(classes, 10**6) or classes != len(manifest["class_names"]):
        return f"num_classes {classes!r} does not match its {len(manifest['class_names'])} class_names"
    if not isinstance(manifest.get("eval", {}), dict):
        return "'eval' is not an object"
    if not manifest["artifacts"]:
        return "it lists no artifacts"
    for key, entry in manifest["artifacts"].items():
        if not isinstance(entry, dict) or not all(isinstance(entry.get(f), str) for f in ("format", "precision")):
            return f"artifact {key!r} needs a 'format' and a 'precision'"
        files, sha = entry.get("files"), entry.get("sha256")
        if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
            return f"artifact {key!r} needs a non-empty list of 'files'"
        if not isinstance(sha, dict) or not all(isinstance(sha.get(f), str) for f in files):
            return f"artifact {key!r} needs a 'sha256' for each of its files"
        for field in NUMERIC_FIELDS:
            if field in entry and not is_number(entry[field]):
                return f"artifact {key!r} has {field} {entry[field]!r}, not a number"
    return None


def artifact_key(fmt: str, precision: str) -> str:
    """The manifest key of a format's artifact at a precision: ``onnx-int8``, ``openvino-fp32``, ..."""
    return f"{fmt}-{precision}"


def verify_artifact(export_dir: str | Path, manifest: dict[str, Any], key: str) -> list[Path]:
    """Check every file of an artifact against its recorded sha256; return the paths."""
    export_dir = Path(export_dir)
    entry = manifest["artifacts"][key]
    paths = []
    for rel in entry["files"]:
        p = export_dir / rel
        if not p.is_file():
            raise EdgeKDError(f"artifact {key}: {p} is missing; re-run `edgekd export`")
        if sha256_file(p) != entry["sha256"][rel]:
            raise EdgeKDError(
                f"artifact {key}: {p} does not match its sha256 in {MANIFEST}; the file was changed or corrupted")
        paths.append(p)
    return paths


def manifest_preprocessing(manifest: dict[str, Any]) -> PreprocessSpec:
    """The manifest's preprocessing spec (a missing ``resize`` is the input shape's [H, W])."""
    return PreprocessSpec.from_dict(manifest["preprocessing"], manifest["input"].get("shape", [None] * 4)[2:])
