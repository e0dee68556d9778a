"""``edgekd export``: a run dir in, a verified export dir (DESIGN §3) out.

Every artifact is scored on the held-out split against the PyTorch model before the manifest is written, and
the whole directory is built under a temporary name, so a failure at any step leaves no export dir behind.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from edgekd import __version__
from edgekd.errors import EdgeKDError
from edgekd.export.manifest import ARTIFACT_KINDS, FORMAT_VERSION, MANIFEST, artifact_entry, is_count, is_number
from edgekd.export.verify import verify_file
from edgekd.fsutil import atomic_dir, write_json

FORMATS = ("onnx", "openvino")
CALIB_METHODS = ("minmax", "entropy", "percentile")
FILES = {
    "onnx-fp32": ["model.onnx"],
    "onnx-int8": ["model.int8.onnx"],
    "openvino-fp32": ["openvino-fp32/model.xml", "openvino-fp32/model.bin"],
    "openvino-fp16": ["openvino-fp16/model.xml", "openvino-fp16/model.bin"],
    "openvino-int8": ["openvino-int8/model.xml", "openvino-int8/model.bin"],
}


def _check_options(formats: Any, calib_samples: Any, calib_method: str, max_drop: Any, fp16: bool) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = (formats,)
    formats = tuple(dict.fromkeys(str(f).strip().lower() for f in formats))
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise EdgeKDError(f"unsupported export format {', '.join(bad) or '(none)'}; choose from {', '.join(FORMATS)}")
    if not is_count(calib_samples):
        raise EdgeKDError(f"calib_samples must be a positive integer, got {calib_samples!r}")
    if calib_method not in CALIB_METHODS:
        raise EdgeKDError(f"unknown calibration method {calib_method!r}; choose from {', '.join(CALIB_METHODS)}")
    if max_drop is not None and not (is_number(max_drop) and 0 <= max_drop <= 100):
        raise EdgeKDError(f"max_drop is a number of top-1 accuracy points between 0 and 100, got {max_drop!r}")
    if fp16 and "openvino" not in formats:
        raise EdgeKDError("fp16 writes an OpenVINO FP16 IR; add the openvino format or drop --fp16")
    return formats


@contextlib.contextmanager
def _stage(what: str) -> Iterator[None]:
    """Turn a third-party failure (exporter, quantizer, converter) into a one-line EdgeKDError."""
    try:
        yield
    except EdgeKDError:
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise EdgeKDError(f"{what} failed: {type(e).__name__}: {first[:300]}") from e


def _stack(dataset: Any, indices: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A transformed split as one float32 (N, C, H, W) array plus int64 labels."""
    from torch.utils.data import Subset

    from edgekd.data import make_loader

    if indices is not None:
        dataset = Subset(dataset, indices.tolist())
    xs, ys = [], []
    for x, y in make_loader(dataset, 256, shuffle=False, seed=0):
        xs.append(x.numpy())
        ys.append(np.asarray(y))
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64)


def _torch_logits(model: torch.nn.Module, images: np.ndarray, batch: int = 64) -> np.ndarray:
    with torch.inference_mode():
        return np.concatenate([model(torch.from_numpy(images[i : i + batch])).float().numpy() for i in range(0, len(images), batch)])


def _progress(enabled: bool) -> Progress:
    """Bars on stderr, so stdout stays clean for whatever the caller prints (and NNCF can be silenced there)."""
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), disable=not enabled,
    )


def export_run(
    run_dir: str | Path,
    out: str | Path,
    *,
    formats: tuple[str, ...] | list[str] = FORMATS,
    int8: bool = False,
    calib_samples: int = 300,
    calib_method: str = "minmax",
    max_drop: float | None = None,
    fp16: bool = False,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export the model of ``run_dir`` to ``out`` and return the manifest that was written there.

    ``max_drop`` is in top-1 points: an INT8 artifact losing more than that against the PyTorch model on the
    held-out split is not written (the manifest's ``dropped`` and ``notes`` say why); with OpenVINO it also
    turns on NNCF's accuracy-controlled quantization. Calibration uses ``calib_samples`` training images.
    """
    formats = _check_options(formats, calib_samples, calib_method, max_drop, fp16)
    if max_drop is not None and not int8:
        raise EdgeKDError("max_drop bounds the INT8 artifacts' accuracy drop; add --int8 or drop --max-drop")
    with atomic_dir(out, overwrite=overwrite) as tmp:  # refuses an existing export dir before any work
        job = _Job.prepare(run_dir, int8, calib_samples, calib_method, max_drop)
        with tempfile.TemporaryDirectory(prefix="edgekd-export-") as scratch, _progress(progress) as bar:
            job.run(Path(tmp), Path(scratch), bar, formats, int8, fp16)
        write_json(Path(tmp) / MANIFEST, job.manifest)
    return job.manifest


def _describe(run_dir: str | Path, desc: dict[str, Any], bundle: Any, val_samples: int, torch_acc: float) -> tuple[dict, dict]:
    """The manifest skeleton (no artifacts yet) and the metadata embedded in every model file."""
    size = [int(v) for v in desc["input_size"]]
    name = f"{desc['arch']}-{bundle.name}"
    preprocessing = {
        "resize": size[1:],
        "interpolation": "bilinear",
        "mean": list(desc["mean"]),
        "std": list(desc["std"]),
        "channel_order": "RGB",
        "layout": "NCHW",
        "scale": 1 / 255,
    }
    source = str(Path(run_dir).resolve())
    metadata = {
        "model": name,
        "arch": desc["arch"],
        "class_names": list(desc["class_names"]),
        "preprocessing": preprocessing,
        "source_run": source,
        "edgekd_version": __version__,
    }
    manifest = {
        "format_version": FORMAT_VERSION,
        "model": name,
        "source_run": source,
        "arch": desc["arch"],
        "num_classes": int(desc["num_classes"]),
        "class_names": list(desc["class_names"]),
        "input": {"name": "input", "shape": [None, *size], "dtype": "float32"},
        "output": {"name": "logits", "shape": [None, int(desc["num_classes"])]},
        "preprocessing": preprocessing,
        "eval": {
            "dataset": desc["dataset"],
            "options": desc.get("dataset_options") or {},
            "split": "val",
            "samples": val_samples,
            "torch_accuracy": torch_acc,
        },
        "edgekd_version": __version__,
        "artifacts": {},
        "dropped": {},
        "notes": [],
    }
    return manifest, metadata


class _Job:
    """One export: holds the evaluation data and fills the manifest as artifacts are written and verified."""

    def __init__(self, model, val_images, val_labels, reference, torch_acc, calib, calib_method, max_drop, metadata, manifest) -> None:
        self.model = model
        self.val_images, self.val_labels, self.reference, self.torch_acc = val_images, val_labels, reference, torch_acc
        self.calib, self.calib_method, self.max_drop = calib, calib_method, max_drop
        self.metadata, self.manifest = metadata, manifest

    @classmethod
    def prepare(cls, run_dir: str | Path, int8: bool, calib_samples: int, calib_method: str, max_drop: float | None) -> _Job:
        """Load the run's model and data once: held-out images, PyTorch reference logits, calibration images."""
        from edgekd.data import build_data
        from edgekd.rundir import load_model

        model, desc = load_model(run_dir)
        with _stage(f"loading dataset {desc['dataset']!r}"):
            options = desc.get("dataset_options") or {}
            bundle = build_data(desc["dataset"], image_size=int(desc["input_size"][1]), options=options)
        if bundle.num_classes != desc["num_classes"]:
            raise EdgeKDError(
                f"dataset {desc['dataset']!r} has {bundle.num_classes} classes but the run's model has "
                f"{desc['num_classes']}; the run dir does not match its dataset"
            )
        val_images, val_labels = _stack(bundle.val_set())
        with _stage("running the PyTorch model"):
            reference = _torch_logits(model, val_images)
        torch_acc = float((reference.argmax(1) == val_labels).mean())
        calib = None
        if int8:
            n = min(calib_samples, len(bundle.raw_train))
            picks = np.sort(np.random.default_rng(0).choice(len(bundle.raw_train), n, replace=False))
            calib, _ = _stack(bundle.calib_set(), picks)
        manifest, metadata = _describe(run_dir, desc, bundle, len(val_labels), torch_acc)
        return cls(model, val_images, val_labels, reference, torch_acc, calib, calib_method, max_drop, metadata, manifest)

    def run(self, out: Path, scratch: Path, bar: Progress, formats: tuple[str, ...], int8: bool, fp16: bool) -> None:
        from edgekd.export import onnx_export

        onnx_fp32 = (out if "onnx" in formats else scratch) / FILES["onnx-fp32"][0]
        task = bar.add_task("ONNX FP32 export", total=1)
        start = time.perf_counter()
        with _stage("ONNX export"):
            example = torch.from_numpy(self.val_images[: min(2, len(self.val_images))])
            onnx_export.export_onnx(self.model, example, onnx_fp32, self.metadata)
        onnx_seconds = time.perf_counter() - start
        bar.advance(task)
        if "onnx" in formats:
            self._add(out, "onnx-fp32", onnx_seconds, bar, opset=onnx_export.OPSET)
        if "onnx" in formats and int8:
            task = bar.add_task("ONNX INT8 calibration", total=len(self.calib))
            start = time.perf_counter()
            with _stage("ONNX Runtime INT8 quantization"):
                onnx_export.quantize_onnx(
                    onnx_fp32, out / FILES["onnx-int8"][0], self.calib, self.calib_method, self.metadata,
                    lambda n: bar.advance(task, n), scratch,
                )
            quant = {"tool": "onnxruntime", "format": "QDQ", "per_channel": True, "weights": "int8",
                     "activations": "uint8", "reduce_range": True, "calibration": self._calibration(self.calib_method)}
            self._add(out, "onnx-int8", time.perf_counter() - start, bar, opset=onnx_export.OPSET, quantization=quant)
        if "openvino" in formats:
            self._openvino(out, onnx_fp32, bar, int8, fp16)

    def _openvino(self, out: Path, onnx_fp32: Path, bar: Progress, int8: bool, fp16: bool) -> None:
        from edgekd.export import openvino_export

        task = bar.add_task("OpenVINO conversion", total=1)
        start = time.perf_counter()
        with _stage("OpenVINO conversion"):
            ov_model = openvino_export.read_onnx(onnx_fp32, self.metadata)
            openvino_export.save_ir(ov_model, out / FILES["openvino-fp32"][0])
        convert_seconds = time.perf_counter() - start
        bar.advance(task)
        self._add(out, "openvino-fp32", convert_seconds, bar)
        if fp16:
            start = time.perf_counter()
            with _stage("OpenVINO FP16 compression"):
                openvino_export.save_ir(ov_model, out / FILES["openvino-fp16"][0], fp16=True)
            self._add(out, "openvino-fp16", convert_seconds + time.perf_counter() - start, bar)
        if int8:
            accuracy_control = self.max_drop is not None
            task = bar.add_task("OpenVINO INT8 (NNCF)" + (" with accuracy control" if accuracy_control else ""), total=1)
            start = time.perf_counter()
            with _stage("NNCF INT8 quantization"):
                quantized = openvino_export.quantize_ir(
                    ov_model, self.calib, max_drop=self.max_drop,
                    val_images=self.val_images if accuracy_control else None, val_labels=self.val_labels,
                )
                openvino_export.save_ir(quantized, out / FILES["openvino-int8"][0])
            bar.advance(task)
            quant = {"tool": "nncf", "preset": openvino_export.PRESET, "bias_correction": openvino_export.BIAS_CORRECTION,
                     "accuracy_control": accuracy_control,
                     "calibration": self._calibration("minmax")}
            self._add(out, "openvino-int8", convert_seconds + time.perf_counter() - start, bar, quantization=quant)

    def _calibration(self, method: str) -> dict[str, Any]:
        return {"split": "train", "samples": int(len(self.calib)), "method": method}

    def _add(self, out: Path, key: str, seconds: float, bar: Progress, **extra: Any) -> None:
        """Verify a written artifact; keep it in the manifest, or remove it if INT8 misses ``max_drop``."""
        fmt, precision = ARTIFACT_KINDS[key]
        files = FILES[key]
        task = bar.add_task(f"verify {key}", total=1)
        with _stage(f"verifying {key}"):
            scores = verify_file(out / files[0], fmt, self.val_images, self.val_labels, self.reference)
        bar.advance(task)
        drop = (self.torch_acc - scores["accuracy"]) * 100
        fields = {"format": fmt, "precision": precision, **scores, "export_seconds": round(seconds, 3), **extra}
        if precision == "int8" and self.max_drop is not None and drop > self.max_drop:
            for f in files:
                (out / f).unlink()
                if (out / f).parent != out and not any((out / f).parent.iterdir()):
                    (out / f).parent.rmdir()
            reason = f"top-1 drop {drop:.2f} points > max_drop {self.max_drop:g}"
            self.manifest["dropped"][key] = {**fields, "reason": reason}
            self.manifest["notes"].append(f"{key} not written: {reason}")
            return
        self.manifest["artifacts"][key] = artifact_entry(out, files, **fields)
