"""Inference runtimes, one class each, behind one interface: ``run(batch) -> logits``.

Torch-free: this is what the server and the benchmark execute on the device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekd.errors import EdgeKDError


class Runtime:
    """A loaded model: float32 NCHW batch in, float32 logits out."""

    name = ""

    def run(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @staticmethod
    def version() -> str:
        raise NotImplementedError


class OrtRuntime(Runtime):
    """ONNX Runtime on CPU; ``threads`` sets intra-op threads (None: ORT's default, one per core).

    ``spin``: idle intra-op threads busy-wait for the next call (ORT's default: the lowest latency when inference
    is all the process does). A server turns it off, so that between calls the cores parse HTTP instead.
    """

    name = "ort"

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
            raise EdgeKDError(f"onnxruntime cannot load {model_path}: {str(e).splitlines()[0]}") from None
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]

    @staticmethod
    def version() -> str:
        import onnxruntime as ort

        return ort.__version__


class OpenVINORuntime(Runtime):
    """OpenVINO on CPU; ``hint`` is LATENCY or THROUGHPUT, ``streams`` the number of inference streams."""

    name = "openvino"

    def __init__(
        self, model_path: str | Path, threads: int | None = None, hint: str = "LATENCY", streams: int | None = None
    ) -> None:
        import openvino as ov

        config: dict[str, Any] = {"PERFORMANCE_HINT": hint.upper()}
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
            raise EdgeKDError(f"OpenVINO cannot load {model_path}: {str(e).splitlines()[0]}") from None
        self.request = self.compiled.create_infer_request()

    def run(self, batch: np.ndarray) -> np.ndarray:
        result = self.request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.asarray(result[self.compiled.output(0)], dtype=np.float32)

    @staticmethod
    def version() -> str:
        import openvino as ov

        return ov.__version__


RUNTIMES: dict[str, type[Runtime]] = {"ort": OrtRuntime, "openvino": OpenVINORuntime}


def open_artifact(export_dir: str | Path, manifest: dict[str, Any], key: str, *, verify: bool = True, **options: Any) -> Runtime:
    """Load artifact ``key`` of an export dir with the runtime its format needs (sha256-checked first)."""
    from edgekd.export.manifest import RUNTIME_OF_FORMAT, verify_artifact

    if key not in manifest["artifacts"]:
        raise EdgeKDError(f"no artifact {key!r} in this export; it has: {', '.join(manifest['artifacts'])}")
    entry = manifest["artifacts"][key]
    paths = verify_artifact(export_dir, manifest, key) if verify else [Path(export_dir) / f for f in entry["files"]]
    model_file = next(p for p in paths if p.suffix in (".onnx", ".xml"))
    cls = RUNTIMES[RUNTIME_OF_FORMAT[entry["format"]]]
    return cls(model_file, **options)

