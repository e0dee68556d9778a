"""OpenVINO on CPU: runs OpenVINO IR (FP32, FP16-compressed and NNCF INT8)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekd.errors import EdgeKDError, one_line
from edgekd.runtimes.base import Runtime
from edgekd.runtimes.registry import register_runtime

HINTS = ("LATENCY", "THROUGHPUT")


@register_runtime
class OpenVINORuntime(Runtime):
    """``hint`` is LATENCY or THROUGHPUT, ``streams`` the number of inference streams (None: the hint's choice)."""

    name = "openvino"
    title = "OpenVINO"
    package = "openvino"
    formats = ("openvino",)
    platform = "openvino_ir"
    options = ("hint", "streams")

    def __init__(
        self, model_path: str | Path, threads: int | None = None, hint: str = "LATENCY", streams: int | None = None
    ) -> None:
        import openvino as ov

        # CPUs with AMX or AVX-512 BF16 otherwise run an FP32 model's layers in bf16: its artifact would no longer
        # agree with PyTorch, and an INT8 model's unquantized layers would lose precision the export did not measure
        config: dict[str, Any] = {"PERFORMANCE_HINT": hint.upper(), "INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if streams:
            config["NUM_STREAMS"] = streams
        try:
            core = ov.Core()
            model = core.read_model(str(model_path))
            # dynamic batch: reshape the first dimension to -1 so any batch size runs
            shape = model.input(0).get_partial_shape()
            shape[0] = -1
            model.reshape({model.input(0): shape})
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as e:  # OpenVINO raises RuntimeError subclasses with long messages
            raise EdgeKDError(f"OpenVINO cannot load {model_path}: {one_line(e, first_line=True)}") from None
        self.request = self.compiled.create_infer_request()

    def run(self, batch: np.ndarray) -> np.ndarray:
        result = self.request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.asarray(result[self.compiled.output(0)], dtype=np.float32)
