"""ONNX: the FP32 graph from torch, and INT8 with ONNX Runtime's static QDQ quantization (or, when all of its
remedies miss ``max_drop`` and ``qat_epochs`` asks for it, the QDQ graph of distillation-aware QAT, ``export/qat.py``).

The FP32 graph comes from the TorchScript exporter (``dynamo=False``): the ``torch.export`` exporter gives the same
logits, size and speed on edgekd's students and takes seconds longer per export
(``benchmarks/results/onnx-exporter.md``). TorchScript export is deprecated upstream: moving is the
``dynamo=True, dynamic_shapes=..., external_data=False`` arguments below, and the tests pin the resulting contract.
Every other format descends from this graph (the exporter's ``ExportJob.graph``).
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekd.errors import EdgeKDError
from edgekd.export.formats.base import ExportFormat, register_format

if TYPE_CHECKING:
    import onnx as onnx_lib
    from torch import Tensor, nn

    from edgekd.export.exporter import ExportJob

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 18
CALIB_BATCH = 16
# ORT's calibrator options per --calib-method. quantize_static forwards no bin counts to its calibrator, and ORT's
# entropy defaults (128 histogram bins, 128 quantized bins) leave one candidate threshold, the full range: minmax
# again. 2048 bins as PyTorch's observers.
CALIBRATOR_OPTIONS: dict[str, dict[str, Any]] = {
    "minmax": {},
    "entropy": {"num_bins": 2048, "num_quantized_bins": 128},
    "percentile": {"num_bins": 2048, "percentile": 99.999},
}


@register_format
class OnnxFormat(ExportFormat):
    key = "onnx"
    title = "ONNX"
    runtime = "ort"
    files = {"fp32": ["model.onnx"], "int8": ["model.int8.onnx"]}

    def write(self, precision: str, job: ExportJob) -> dict[str, Any]:
        (path,) = self.paths(precision, job.out)
        if precision == "fp32":
            job.graph(path)
            return {"opset": OPSET}
        quantization = {"tool": "onnxruntime", "format": "QDQ", "per_channel": True, "weights": "int8",
                        "activations": "uint8", "reduce_range": True}
        if job.max_drop is None:
            fp32_nodes = self._quantize(job, path, Attempt(job.calib_method, len(job.calib)))
            return {"opset": OPSET, "quantization": {**quantization, "calibration": job.calibration(job.calib_method),
                                                     "fp32_nodes": fp32_nodes}}
        tried = self._search(job, path)
        kept = tried[-1]
        if kept["drop_points"] > job.max_drop and job.qat_epochs:
            return {"opset": OPSET, "quantization": {**self._qat(job, path), "search": tried}}
        return {"opset": OPSET, "quantization": {
            **quantization, "calibration": {**job.calibration(kept["calibration"]), "samples": kept["samples"]},
            "fp32_nodes": kept["fp32_nodes"], "search": tried}}

    def _quantize(self, job: ExportJob, path: Path, attempt: Attempt) -> list[str]:
        calib = job.calibration_images(attempt.samples)
        advance = job.task(f"ONNX INT8 calibration ({attempt.label})", len(calib))
        with job.stage("ONNX Runtime INT8 quantization"):
            return quantize_onnx(job.graph(), path, calib, attempt.method, job.metadata, advance, job.scratch,
                                 keep_sensitive=attempt.keep_sensitive, fp32_nodes=job.fp32_nodes)

    def _qat(self, job: ExportJob, path: Path) -> dict[str, Any]:
        """Distillation-aware QAT (``edgekd.export.qat``) in place of the INT8 file the search left at ``path``."""
        import torch

        from edgekd.export.formats.openvino import nncf_quiet
        from edgekd.export.qat import quantization_aware_training

        example = torch.from_numpy(job.val_images[: min(2, len(job.val_images))])
        with job.stage("NNCF quantization-aware training"), nncf_quiet():
            return quantization_aware_training(
                job, job.qat_epochs, lambda model: export_qdq(model, example, path, job.metadata))

    def _search(self, job: ExportJob, path: Path) -> list[dict[str, Any]]:
        """ONNX Runtime's remedies for an INT8 model that misses ``max_drop``, fastest first, until one meets it:
        the other calibration methods, then more calibration images, then the first convolution and the
        classifier kept in FP32 (the layers that usually lose most). The file left at ``path`` is the first that
        meets the bound, else the last tried; every attempt's numbers are returned for the manifest."""
        tried: list[dict[str, Any]] = []
        methods = [job.calib_method] + [m for m in CALIBRATOR_OPTIONS if m != job.calib_method]
        plans = [Attempt(m, len(job.calib)) for m in methods]
        if job.most_calibration_samples > len(job.calib):
            plans.append(Attempt("percentile", job.most_calibration_samples))
        for attempt in [*plans, None]:
            if attempt is None:  # mixed precision, calibrated as the best full-INT8 attempt was
                best = max(tried, key=lambda t: t["accuracy"])
                attempt = Attempt(best["calibration"], best["samples"], keep_sensitive=True)
            fp32_nodes = self._quantize(job, path, attempt)
            scores = job.score(path, self.key)
            drop = (job.torch_acc - scores["accuracy"]) * 100
            tried.append({"calibration": attempt.method, "samples": attempt.samples, "fp32_nodes": fp32_nodes,
                          "accuracy": scores["accuracy"], "drop_points": round(drop, 4)})
            if drop <= job.max_drop:
                break
        return tried


def export_onnx(model: nn.Module, example: Tensor, path: Path, metadata: dict[str, Any]) -> None:
    """Write ``model`` as one self-contained, checked ONNX file with a dynamic batch axis and metadata."""
    import onnx
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notice is not the user's concern
        torch.onnx.export(
            model.eval(),
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=OPSET,
            dynamo=False,
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    proto = onnx.load(str(path))
    set_metadata(proto, metadata)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))


def export_qdq(model: nn.Module, example: Tensor, path: Path, metadata: dict[str, Any]) -> None:
    """Write a fake-quantized model as a QDQ ONNX file with int8 weights, as ONNX Runtime's quantizer stores them.

    The exporter writes each weight in FP32 followed by a QuantizeLinear, which ONNX Runtime evaluates once at load:
    the same INT8 model in a file larger than the FP32 one. Each such QuantizeLinear is replaced by its result.
    """
    import onnx

    export_onnx(model, example, path, metadata)
    proto = onnx.load(str(path))
    fold_constant_quantization(proto.graph)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))


def fold_constant_quantization(graph: onnx_lib.GraphProto) -> None:
    """Replace every QuantizeLinear of a constant by its integer initializer (ONNX's rounding: half to even, then
    saturation), and drop the constants nothing reads any more."""
    from onnx import numpy_helper

    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    constants |= {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node
                  if n.op_type == "Constant" and n.attribute[0].name == "value"}
    for node in [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] in constants]:
        x, scale, zero = (constants[name] for name in node.input)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % x.ndim
        shape = [-1 if i == axis else 1 for i in range(x.ndim)] if scale.ndim else []
        limits = np.iinfo(zero.dtype)
        q = np.round(x / scale.reshape(shape)) + zero.reshape(shape).astype(np.int32)
        graph.initializer.append(numpy_helper.from_array(np.clip(q, limits.min, limits.max).astype(zero.dtype),
                                                         node.output[0]))
        graph.node.remove(node)
    read = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
    for node in [n for n in graph.node if n.op_type == "Constant" and n.output[0] not in read]:
        graph.node.remove(node)
    for tensor in [t for t in graph.initializer if t.name not in read]:
        graph.initializer.remove(tensor)


def set_metadata(proto: onnx_lib.ModelProto, metadata: dict[str, Any]) -> None:
    """Store ``metadata`` in ``metadata_props`` (non-string values as JSON) so the file describes itself."""
    import onnx

    values = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    onnx.helper.set_model_props(proto, values)


class _CalibrationReader:
    """Feeds calibration images to ORT in equal batches and advances a progress callback per batch.

    ORT's ``CalibrationDataReader`` accepts any class with ``get_next``. Equal batches, because ORT's histogram
    calibrators (entropy, percentile) stack the batches' outputs with ``np.asarray``, which fails on a short last
    batch: the batch is the largest size up to ``CALIB_BATCH`` that divides the number of images.
    """

    def __init__(self, images: np.ndarray, advance: Callable[[int], None]) -> None:
        self.images = images
        self.advance = advance
        self.start = 0
        self.batch = max(b for b in range(1, CALIB_BATCH + 1) if len(images) % b == 0)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.start >= len(self.images):
            return None
        chunk = self.images[self.start : self.start + self.batch]
        self.start += len(chunk)
        self.advance(len(chunk))
        return {INPUT_NAME: np.ascontiguousarray(chunk, dtype=np.float32)}

    def rewind(self) -> None:
        self.start = 0


@dataclass(frozen=True)
class Attempt:
    """One INT8 calibration to try: ORT's calibration method and how many training images it sees."""

    method: str
    samples: int
    keep_sensitive: bool = False  # the first convolution and the classifier stay FP32

    @property
    def label(self) -> str:
        return f"{self.method}, {self.samples} images" + (", first conv and classifier in FP32" * self.keep_sensitive)


QUANTIZED_OPS = ("Conv", "Gemm", "MatMul")  # the layers whose weights INT8 quantizes


def quantizable_nodes(nodes: Any) -> list[str]:
    """The names of an ONNX graph's Conv, Gemm and MatMul nodes, in graph order: the layers an INT8 artifact may
    keep in FP32."""
    return [n.name for n in nodes if n.op_type in QUANTIZED_OPS]


def sensitive_nodes(nodes: Any) -> list[str]:
    """The first convolution (raw pixels in) and the last Gemm/MatMul/Conv (logits out) of an ONNX graph."""
    first = next((n.name for n in nodes if n.op_type == "Conv"), None)
    last = next((n.name for n in reversed(nodes) if n.op_type in ("Gemm", "MatMul", "Conv")), None)
    return list(dict.fromkeys(n for n in (first, last) if n))


def quantize_onnx(
    fp32_path: Path,
    out_path: Path,
    calib: np.ndarray,
    method: str,
    metadata: dict[str, Any],
    advance: Callable[[int], None],
    scratch: Path,
    keep_sensitive: bool = False,
    fp32_nodes: Sequence[str] = (),
) -> list[str]:
    """Static INT8 (QDQ, per-channel weights) of an FP32 ONNX file, calibrated on ``calib`` images; the nodes named in
    ``fp32_nodes`` (and with ``keep_sensitive`` the first convolution and the classifier) stay FP32. Returns the
    nodes kept in FP32.

    ``quant_pre_process`` first folds and shape-infers the graph so the quantizer sees fused Conv+Relu
    patterns; ORT's calibrator for ``method`` then measures activation ranges with our bin settings, which
    ``quantize_static`` reads from its calibration cache; the result keeps the FP32 file's metadata. Types
    follow ORT's fast x86 path, uint8 activations with int8 weights; ``reduce_range`` (7-bit weights) avoids the
    int16 saturation of AVX2 CPUs without VNNI at the same speed (docs/decisions.md, ONNX Runtime INT8 types).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calibrate_method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                        "percentile": CalibrationMethod.Percentile}[method]
    prepared, ranges = scratch / "prepared.onnx", scratch / "calibration.json"
    quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
    nodes = onnx.load(str(prepared)).graph.node
    layers = quantizable_nodes(nodes)
    unknown = [name for name in fp32_nodes if name not in layers]
    if unknown:
        raise EdgeKDError(f"fp32_nodes: no quantizable node {unknown[0]!r} in the ONNX graph; its nodes are "
                          f"{', '.join(layers[:6])}{', ...' if len(layers) > 6 else ''}")
    fp32_nodes = list(dict.fromkeys([*fp32_nodes, *(sensitive_nodes(nodes) if keep_sensitive else [])]))
    with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print their settings
        calibrator = create_calibrator(
            prepared, augmented_model_path=str(scratch / "augmented.onnx"), calibrate_method=calibrate_method,
            extra_options=CALIBRATOR_OPTIONS[method],
        )
        calibrator.collect_data(_CalibrationReader(calib, advance))
        save_tensors_data(calibrator.compute_data(), ranges)
    quantize_static(
        str(prepared),
        str(out_path),
        None,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        reduce_range=True,
        calibrate_method=calibrate_method,
        calibration_cache_path=ranges,
        nodes_to_exclude=fp32_nodes,
    )
    proto = onnx.load(str(out_path))
    set_metadata(proto, metadata)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out_path))
    return fp32_nodes
