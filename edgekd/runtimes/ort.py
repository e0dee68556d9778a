"""ONNX Runtime on CPU: runs ONNX files (FP32 and QDQ INT8)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekd.errors import EdgeKDError, one_line
from edgekd.runtimes.base import Runtime
from edgekd.runtimes.registry import register_runtime


@register_runtime
class OrtRuntime(Runtime):
    """``threads`` sets intra-op threads (None: ORT's default, one per core).

    ``spin``: idle intra-op threads busy-wait for the next call (ORT's default: the lowest latency when inference
    is all the process does). A server turns it off, so that between calls the cores parse HTTP instead.
    """

    name = "ort"
    title = "ONNX Runtime"
    package = "onnxruntime"
    formats = ("onnx",)
    platform = "onnxruntime_onnx"
    options = ("spin",)

    def __init__(self, model_path: str | Path, threads: int | None = None, spin: bool = True) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        if not spin:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own Fail/InvalidGraph types
            raise EdgeKDError(f"onnxruntime cannot load {model_path}: {one_line(e, first_line=True)}") from None
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]
