"""OpenVINO IR: FP32 converted from the exporter's ONNX graph, FP16 on request, and INT8 through NNCF
post-training quantization (accuracy-controlled with ``--max-drop``).

The IR is converted from the exporter's ONNX file rather than traced again from torch, so every artifact of
an export dir descends from one graph.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekd.export.formats.base import ExportFormat, register_format

if TYPE_CHECKING:
    import openvino as ov

    from edgekd.export.exporter import ExportJob

PRESET = "mixed"
# NNCF's fast bias correction, fitted on a few hundred calibration images, cost points of top-1 agreement that
# ORT's quantizer, which has no such step, keeps (docs/decisions.md, OpenVINO INT8 without bias correction)
BIAS_CORRECTION = False


@register_format
class OpenVINOFormat(ExportFormat):
    key = "openvino"
    title = "OpenVINO IR"
    runtime = "openvino"
    files = {p: [f"openvino-{p}/model.xml", f"openvino-{p}/model.bin"] for p in ("fp32", "fp16", "int8")}

    def __init__(self) -> None:
        self.model: ov.Model | None = None  # converted once, saved at every precision

    def write(self, precision: str, job: ExportJob) -> dict[str, Any]:
        xml = self.paths(precision, job.out)[0]
        if self.model is None:
            with job.stage("OpenVINO conversion"):
                self.model = read_onnx(job.graph(), job.metadata)
        if precision != "int8":
            with job.stage("OpenVINO FP16 compression" if precision == "fp16" else "OpenVINO conversion"):
                save_ir(self.model, xml, fp16=precision == "fp16")
            return {}
        accuracy_control = job.max_drop is not None
        advance = job.task("OpenVINO INT8 (NNCF)" + (" with accuracy control" if accuracy_control else ""), 1)
        with job.stage("NNCF INT8 quantization"):
            quantized = quantize_ir(
                self.model, job.calib, max_drop=job.max_drop,
                val_images=job.val_images if accuracy_control else None, val_labels=job.val_labels,
            )
            save_ir(quantized, xml)
        advance(1)
        return {"quantization": {"tool": "nncf", "preset": PRESET, "bias_correction": BIAS_CORRECTION,
                                 "accuracy_control": accuracy_control, "calibration": job.calibration("minmax")}}


def read_onnx(onnx_path: Path, metadata: dict[str, Any]) -> ov.Model:
    """The OpenVINO model of an ONNX file, with ``metadata`` copied into its rt_info under ``edgekd``."""
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    for key, value in metadata.items():
        model.set_rt_info(value if isinstance(value, str) else json.dumps(value), ["edgekd", key])
    return model


def save_ir(model: ov.Model, xml_path: Path, *, fp16: bool = False) -> list[Path]:
    """Write ``model.xml`` + ``model.bin``; FP16 compression only when asked (FP32 stays bit-exact)."""
    import openvino as ov

    xml_path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(xml_path), compress_to_fp16=fp16)
    return [xml_path, xml_path.with_suffix(".bin")]


@contextlib.contextmanager
def nncf_quiet() -> Iterator[Any]:
    """Import NNCF with its log lines and stdout Rich bars muted; the exporter shows its own progress."""
    # NNCF imports torch.utils.cpp_extension, which logs a CUDA warning irrelevant to CPU quantization.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    import nncf

    level = logging.getLogger("nncf").level
    nncf.set_log_level(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield nncf
    finally:
        nncf.set_log_level(level)


def quantize_ir(
    model: ov.Model,
    calib: np.ndarray,
    *,
    val_images: np.ndarray | None = None,
    val_labels: np.ndarray | None = None,
    max_drop: float | None = None,
    preset: str = PRESET,
) -> ov.Model:
    """INT8 OpenVINO model via ``nncf.quantize``; with ``max_drop`` (points), accuracy-controlled on the val split.

    NNCF takes the drop as a fraction and cannot meet a negative one, so a negative ``max_drop`` is passed as 0
    and the exporter's own check against the PyTorch model decides whether the artifact is kept.
    """
    with nncf_quiet() as nncf:
        calibration = nncf.Dataset(range(len(calib)), lambda i: calib[i : i + 1])
        advanced = nncf.AdvancedQuantizationParameters(disable_bias_correction=not BIAS_CORRECTION)
        kwargs = {"preset": nncf.QuantizationPreset(preset), "subset_size": len(calib)}
        if max_drop is None or val_images is None:
            return nncf.quantize(model, calibration, advanced_parameters=advanced, **kwargs)
        validation = nncf.Dataset(list(zip(val_images, val_labels)), lambda item: item[0][None])
        return nncf.quantize_with_accuracy_control(
            model, calibration, validation, _top1_per_sample, max_drop=max(max_drop, 0.0) / 100.0,
            drop_type=nncf.DropType.ABSOLUTE, advanced_quantization_parameters=advanced, **kwargs,
        )


def _top1_per_sample(compiled: ov.CompiledModel, items: Any) -> tuple[float, list[float]]:
    """NNCF's validation function: accuracy plus per-sample hits, which it uses to rank quantizers to revert."""
    hits = [float(np.asarray(compiled(x[None])[0]).argmax() == y) for x, y in items]
    return float(np.mean(hits)), hits
