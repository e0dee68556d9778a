"""``edgekd export``: a run dir in, a verified export dir (``edgekd.contracts.manifest``) out.

Every artifact is scored on the held-out split against the PyTorch model before the manifest is written, and
the whole directory is built under a temporary name, so a failure at any step leaves no export dir behind.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.progress import Progress

from edgekd import __version__
from edgekd.contracts.manifest import FORMAT_VERSION, MANIFEST, artifact_entry, artifact_key
from edgekd.contracts.values import is_count, is_number
from edgekd.errors import EdgeKDError, one_line
from edgekd.export.formats import FORMATS, ExportFormat
from edgekd.export.formats.onnx import CALIBRATOR_OPTIONS, export_onnx
from edgekd.export.verify import verify_file
from edgekd.fsutil import atomic_dir, full_disk_as_error, write_json
from edgekd.progress import progress_bar
from edgekd.settings import EXPORT

if TYPE_CHECKING:
    import torch

CALIB_METHODS = tuple(CALIBRATOR_OPTIONS)
MORE_CALIB = 1024  # the most training images the INT8 search calibrates on


def _check_options(formats: Any, calib_samples: Any, calib_method: str, max_drop: Any, fp16: bool, int8: bool,
                   qat_epochs: Any, fp32_nodes: Sequence[str] = ()) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = (formats,)
    formats = tuple(dict.fromkeys(str(f).strip().lower() for f in formats))
    if not formats:
        raise EdgeKDError(f"no export format given; choose from {', '.join(FORMATS)}")
    for name in formats:
        FORMATS.lookup(name)  # an unknown one: "did you mean"
    formats = tuple(f for f in FORMATS if f in formats)  # written in registry order: the ONNX graph first
    if not is_count(calib_samples):
        raise EdgeKDError(f"calib_samples must be a positive integer, got {calib_samples!r}")
    if calib_method not in CALIB_METHODS:
        raise EdgeKDError(f"unknown calibration method {calib_method!r}; choose from {', '.join(CALIB_METHODS)}")
    if max_drop is not None and not (is_number(max_drop) and 0 <= max_drop <= 100):
        raise EdgeKDError(f"max_drop is a number of top-1 accuracy points between 0 and 100, got {max_drop!r}")
    with_fp16 = [f for f in FORMATS if "fp16" in FORMATS[f].files]
    if fp16 and not set(with_fp16) & set(formats):
        raise EdgeKDError(f"fp16 writes an FP16 artifact of {', '.join(with_fp16)}; add such a format or drop --fp16")
    if not (qat_epochs == 0 or is_count(qat_epochs)):
        raise EdgeKDError(f"qat_epochs must be a whole number of epochs >= 0, got {qat_epochs!r}")
    if qat_epochs and not (int8 and "onnx" in formats and max_drop is not None):
        raise EdgeKDError("qat_epochs fine-tunes the ONNX INT8 model when post-training quantization misses max_drop; "
                          "it needs int8, the onnx format and a max_drop")
    if fp32_nodes and not (int8 and "onnx" in formats):
        raise EdgeKDError("fp32_nodes keeps ONNX nodes in FP32 in the ONNX Runtime INT8 artifact; it needs int8 and "
                          "the onnx format")
    return formats


@contextlib.contextmanager
def _stage(what: str) -> Iterator[None]:
    """Turn a third-party failure (exporter, quantizer, converter) into a one-line EdgeKDError."""
    try:
        yield
    except EdgeKDError:
        raise
    except Exception as e:
        raise EdgeKDError(f"{what} failed: {type(e).__name__}: {one_line(e, first_line=True)}") from e


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
    import torch

    with torch.inference_mode():
        return np.concatenate([model(torch.from_numpy(images[i : i + batch])).float().numpy()
                               for i in range(0, len(images), batch)])


def export_run(
    run_dir: str | Path,
    out: str | Path,
    *,
    formats: tuple[str, ...] | list[str] = tuple(FORMATS),
    int8: bool = False,
    calib_samples: int = EXPORT.calib_samples,
    calib_method: str = EXPORT.calib_method,
    max_drop: float | None = EXPORT.max_drop,
    qat_epochs: int = EXPORT.qat_epochs,
    fp16: bool = False,
    fp32_nodes: Sequence[str] = EXPORT.fp32_nodes,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export the model of ``run_dir`` to ``out`` and return the manifest that was written there.

    ``max_drop`` is in top-1 points against the PyTorch model on the held-out split. ONNX Runtime INT8 searches
    its remedies (other calibrations, more images, sensitive layers in FP32) until one meets it; OpenVINO uses
    NNCF's accuracy-controlled quantization. An INT8 artifact that still misses it is not written (the
    manifest's ``dropped`` and ``notes`` say why). ``None``: plain post-training quantization, kept whatever it
    loses. Calibration uses ``calib_samples`` training images. ``qat_epochs`` > 0: when ONNX Runtime's search still
    misses ``max_drop``, the student is fine-tuned that many epochs fake-quantized, distilled from its teacher
    (``edgekd.export.qat``), and exported again. ``fp32_nodes``: ONNX node names the ONNX Runtime INT8 artifact
    keeps in FP32 (ORT's nodes to exclude; `edgekd fit` chooses them where INT8 measured slower), recorded in the
    manifest's ``quantization.fp32_nodes``.
    """
    fp32_nodes = tuple(dict.fromkeys(fp32_nodes))
    formats = _check_options(formats, calib_samples, calib_method, max_drop, fp16, int8, qat_epochs, fp32_nodes)
    # atomic_dir refuses an existing export dir before any work; a full disk at any step is one line that says so
    # (measured before atomic_dir removes the partial folder, which frees the space again)
    with atomic_dir(out, overwrite=overwrite) as tmp, full_disk_as_error(Path(out).parent):
        # scratch space inside the folder being built: a killed export leaves nothing in /tmp, and the next
        # export beside it removes the whole partial folder (fsutil.remove_leftovers)
        scratch = Path(tmp) / ".scratch"
        scratch.mkdir()
        with progress_bar(progress) as bar:
            job = ExportJob.prepare(run_dir, Path(tmp), scratch, bar, int8, calib_samples, calib_method, max_drop,
                                    qat_epochs, fp32_nodes)
            precisions = ["fp32"] + ["fp16"] * fp16 + ["int8"] * int8
            for key in formats:
                fmt = FORMATS[key]()
                for precision in fmt.files:
                    if precision in precisions:
                        job.write(fmt, precision)
        shutil.rmtree(scratch)
        write_json(Path(tmp) / MANIFEST, job.manifest)
    return job.manifest


def _describe(run_dir: str | Path, desc: dict[str, Any], bundle: Any, val_samples: int,
              torch_acc: float) -> tuple[dict, dict]:
    """The manifest skeleton (no artifacts yet) and the metadata embedded in every model file."""
    size = [int(v) for v in desc["input_size"]]
    name = f"{desc['arch']}-{bundle.name}"
    preprocessing = bundle.preprocessing.to_dict()  # the model's spec, which ``prepare`` gave the bundle
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


def _tried(search: list[dict[str, Any]]) -> str:
    """The INT8 search's attempts in one line: calibration, images, FP32 layers, drop in points."""
    def one(t: dict[str, Any]) -> str:
        fp32 = f", {len(t['fp32_nodes'])} layers FP32" if t["fp32_nodes"] else ""
        return f"{t['calibration']} ({t['samples']} images{fp32}): {t['drop_points']:.2f}"

    return "; ".join(one(t) for t in search)


class ExportJob:
    """One export: the model, its evaluation and calibration data, and the manifest filled as formats write
    artifacts (``ExportFormat.write``) and each is verified."""

    def __init__(self, model, val_images, val_labels, reference, torch_acc, calib_pool, calib_samples, calib_method,
                 max_drop, metadata, manifest, out: Path, scratch: Path, bar: Progress, *, description=None,
                 bundle=None, qat_epochs: int = 0, fp32_nodes: tuple[str, ...] = ()) -> None:
        self.model = model
        self.fp32_nodes = fp32_nodes  # kept in FP32 in the ONNX Runtime INT8 artifact, whatever the search adds
        self.description, self.bundle, self.qat_epochs = description or {}, bundle, qat_epochs  # what QAT trains on
        self.val_images, self.val_labels, self.reference, self.torch_acc = val_images, val_labels, reference, torch_acc
        self.calib_pool, self.calib_method, self.max_drop = calib_pool, calib_method, max_drop
        self._calib_sets: dict[int, np.ndarray] = {}
        self.calib = self.calibration_images(calib_samples) if calib_pool is not None else None
        self.metadata, self.manifest = metadata, manifest
        self.out, self.scratch, self.bar = out, scratch, bar
        self._graph: Path | None = None

    @classmethod
    def prepare(cls, run_dir: str | Path, out: Path, scratch: Path, bar: Progress, int8: bool, calib_samples: int,
                calib_method: str, max_drop: float | None, qat_epochs: int = 0,
                fp32_nodes: tuple[str, ...] = ()) -> ExportJob:
        """Load the run's model and data once: held-out images, PyTorch reference logits, calibration images."""
        from edgekd.data import run_data
        from edgekd.rundir import load_model

        model, desc = load_model(run_dir)
        with _stage(f"loading dataset {desc['dataset']!r}"):
            bundle = run_data(desc)
        if bundle.num_classes != desc["num_classes"]:
            raise EdgeKDError(
                f"dataset {desc['dataset']!r} has {bundle.num_classes} classes but the run's model has "
                f"{desc['num_classes']}; the run dir does not match its dataset"
            )
        val_images, val_labels = _stack(bundle.val_set())
        with _stage("running the PyTorch model"):
            reference = _torch_logits(model, val_images)
        torch_acc = float((reference.argmax(1) == val_labels).mean())
        pool = bundle.calib_set() if int8 else None
        manifest, metadata = _describe(run_dir, desc, bundle, len(val_labels), torch_acc)
        return cls(model, val_images, val_labels, reference, torch_acc, pool, calib_samples, calib_method, max_drop,
                   metadata, manifest, out, scratch, bar, description=desc, bundle=bundle, qat_epochs=qat_epochs,
                   fp32_nodes=fp32_nodes)

    def graph(self, path: Path | None = None) -> Path:
        """The FP32 ONNX graph every artifact descends from, exported once: at ``path`` when the ONNX format asks
        for it there, else in scratch space for the formats converted from it."""
        if self._graph is None:
            self._graph = path or self.scratch / "graph.onnx"
            advance = self.task("ONNX FP32 export", 1)
            with self.stage("ONNX export"):
                import torch

                example = torch.from_numpy(self.val_images[: min(2, len(self.val_images))])
                export_onnx(self.model, example, self._graph, self.metadata)
            advance(1)
        elif path is not None and path != self._graph:
            raise EdgeKDError(f"the ONNX graph was already exported to {self._graph}, not {path}")
        return self._graph

    def task(self, description: str, total: int) -> Callable[[int], None]:
        """A progress bar; returns its advance function."""
        task = self.bar.add_task(description, total=total)
        return lambda n: self.bar.advance(task, n)

    def stage(self, what: str) -> contextlib.AbstractContextManager[None]:
        """Turn a third-party failure inside the block into a one-line error that names ``what`` failed."""
        return _stage(what)

    def calibration_images(self, samples: int | None) -> np.ndarray:
        """``samples`` un-augmented training images (``None``: as many as the INT8 search uses), the same seeded
        draw each time, so a larger set holds every image of a smaller one."""
        n = min(samples or MORE_CALIB, len(self.calib_pool))
        if n not in self._calib_sets:
            picks = np.sort(np.random.default_rng(0).permutation(len(self.calib_pool))[:n])
            self._calib_sets[n] = _stack(self.calib_pool, picks)[0]
        return self._calib_sets[n]

    @property
    def most_calibration_samples(self) -> int:
        return min(MORE_CALIB, len(self.calib_pool))

    def score(self, path: Path, fmt: str) -> dict[str, float]:
        """Top-1 accuracy, agreement and logit difference of an artifact file on the held-out split."""
        with _stage(f"verifying {path.name}"):
            return verify_file(path, fmt, self.val_images, self.val_labels, self.reference)

    def calibration(self, method: str) -> dict[str, Any]:
        """How INT8 was calibrated, for the manifest."""
        return {"split": "train", "samples": int(len(self.calib)), "method": method}

    def write(self, fmt: ExportFormat, precision: str) -> None:
        """Write one artifact, verify it, and keep it in the manifest, or remove it if INT8 misses ``max_drop``."""
        key, files = artifact_key(fmt.key, precision), fmt.files[precision]
        start = time.perf_counter()
        extra = fmt.write(precision, self)
        seconds = time.perf_counter() - start
        advance = self.task(f"verify {key}", 1)
        with _stage(f"verifying {key}"):
            scores = verify_file(self.out / files[0], fmt.key, self.val_images, self.val_labels, self.reference)
        advance(1)
        drop = (self.torch_acc - scores["accuracy"]) * 100
        fields = {"format": fmt.key, "precision": precision, **scores, "export_seconds": round(seconds, 3), **extra}
        if precision == "int8" and self.max_drop is not None and drop > self.max_drop:
            for f in files:
                (self.out / f).unlink()
                if (self.out / f).parent != self.out and not any((self.out / f).parent.iterdir()):
                    (self.out / f).parent.rmdir()
            reason = f"top-1 drop {drop:.2f} points > max_drop {self.max_drop:g}"
            quantization = extra.get("quantization", {})
            if quantization.get("qat"):
                qat = quantization["qat"]
                reason += f" after {qat['epochs']} epochs of QAT distilled from {qat['teacher']}"
            if quantization.get("search"):
                reason += "; tried " + _tried(quantization["search"])
            self.manifest["dropped"][key] = {**fields, "reason": reason}
            self.manifest["notes"].append(f"{key} not written: {reason}")
            return
        self.manifest["artifacts"][key] = artifact_entry(self.out, files, **fields)
