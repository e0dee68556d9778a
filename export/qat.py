"""Distillation-aware quantization-aware training (QAT): the last INT8 remedy of the ONNX format.

When none of ONNX Runtime's post-training remedies meets ``max_drop`` and ``--qat-epochs N`` asks for it, a
fake-quantized copy of the student is fine-tuned for N epochs with Hinton's KD loss, then exported as a QDQ ONNX
graph that ONNX Runtime runs in INT8 like its own quantizer's output. The choices, and why:

- NNCF's PyTorch path (``nncf.quantize`` on the torch model gives trainable FakeQuantize ops and ranges): the
  field's library, and the tool of the OpenVINO artifact. torch.ao's PT2E QAT is no longer in torch 2.13.
- BatchNorm is folded into its conv first (torch.fx): ONNX Runtime leaves a QDQ conv followed by a BatchNorm in
  FP32, unfused and slow (docs/decisions.md, QAT: BatchNorm folded).
- The types of ONNX Runtime's own path: uint8 activations (NNCF's mixed preset, asymmetric), int8 per-channel
  weights kept to 7 bits (NNCF's overflow fix, ORT's ``reduce_range``), so AVX2 CPUs without VNNI do not saturate.
- The teacher is the run's own (``teacher`` in model.json) when it is an edgekd run dir of the same classes here,
  else the FP32 model itself: distilling the quantized student from its unquantized weights is the usual QAT-KD.
- The loss of ``distill --method kd`` at its defaults, (1-a)·CE + a·T²·KL with a=0.9, T=4, on the augmented
  training split, with NNCF's QAT recipe: Adam at a constant 1e-5, no weight decay. Adam steps each parameter by
  its own gradient scale, which a model whose PTQ fails for a scale outlier needs: SGD with momentum diverged on
  one, and on ordinary models the two end level (docs/decisions.md, QAT: Adam). Runs on the CPU, as the export
  does.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.contracts.rundir import DESCRIPTION
from edgekd.errors import EdgeKDError

if TYPE_CHECKING:
    from edgekd.export.exporter import ExportJob

LR = 1e-5
BATCH = 64
ALPHA, TEMPERATURE = 0.9, 4.0
SELF = "self (the FP32 model)"
QUANTIZATION = {"tool": "nncf", "format": "QDQ", "per_channel": True, "weights": "int8", "activations": "uint8",
                "reduce_range": True}


def quantization_aware_training(job: ExportJob, epochs: int, write: Callable[[nn.Module], None]) -> dict[str, Any]:
    """Fine-tune the fake-quantized student of ``job``, hand it to ``write`` (which exports it to ONNX, where its
    FakeQuantize ops become QuantizeLinear/DequantizeLinear pairs), and return the manifest's ``quantization``."""
    import nncf
    from nncf.torch.quantization.layers import BaseQuantizer, QuantizerExportMode

    from edgekd.data import make_loader

    start = time.perf_counter()
    teacher, teacher_name = _teacher(job)
    student, folded = _fold_batchnorm(job.model)
    calib = torch.from_numpy(job.calib)
    loader = make_loader(job.bundle.train_set(), BATCH, shuffle=True, seed=0)
    with _torch_fake_quant(), torch.random.fork_rng():
        torch.manual_seed(0)  # the augmentations' draws
        # min-max ranges to start from, without the bias correction the OpenVINO path measured as harmful: QAT trains
        # the biases and ranges anyway
        quantized = nncf.quantize(
            student, nncf.Dataset(range(len(calib)), lambda i: calib[i : i + 1]), subset_size=len(calib),
            preset=nncf.QuantizationPreset.MIXED, advanced_parameters=nncf.AdvancedQuantizationParameters(
                overflow_fix=nncf.OverflowFix.ENABLE, disable_bias_correction=True),
        )
        advance = job.task(f"ONNX INT8 QAT ({epochs} epochs, KD from {teacher_name})", epochs * len(loader))
        _fine_tune(quantized, teacher, loader, epochs, advance)
        for module in quantized.modules():
            if isinstance(module, BaseQuantizer):
                module.set_export_mode(QuantizerExportMode.ONNX_QUANTIZE_DEQUANTIZE_PAIRS)
        write(quantized.eval())
    qat = {"epochs": epochs, "teacher": teacher_name, "loss": "kd", "alpha": ALPHA, "T": TEMPERATURE,
           "optimizer": "adam", "lr": LR, "batch_size": BATCH, "steps": epochs * len(loader),
           "batchnorm_folded": folded, "seconds": round(time.perf_counter() - start, 3)}
    return {**QUANTIZATION, "calibration": job.calibration("minmax"), "qat": qat}


def _fine_tune(model: nn.Module, teacher: nn.Module, loader: Any, epochs: int, advance: Callable[[int], None]) -> None:
    """KD from ``teacher``: (1 - a)·CE + a·T²·KL(p_t ‖ p_s), as ``edgekd distill --method kd``."""
    from edgekd.losses import kd_loss

    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            logits = model(x)
            with torch.no_grad():
                target = teacher(x)
            loss = (1 - ALPHA) * F.cross_entropy(logits, y) + ALPHA * kd_loss(logits, target, TEMPERATURE)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            advance(1)


def _teacher(job: ExportJob) -> tuple[nn.Module, str]:
    """The run's recorded teacher if it is an edgekd run dir of the same classes here, else the FP32 model; a
    recorded teacher that cannot be used is said in the manifest's notes."""
    from edgekd.models.freeze import freeze_for_inference
    from edgekd.rundir import load_model

    recorded = job.description.get("teacher")
    if recorded:
        why = f"{recorded} is not an edgekd run dir here"  # moved, a checkpoint file, or a self-teacher's label
        if (Path(recorded) / DESCRIPTION).is_file():
            try:
                model, desc = load_model(recorded)
            except EdgeKDError as e:
                why = str(e)
            else:
                if list(desc["class_names"]) == list(job.description["class_names"]):
                    return freeze_for_inference(model), str(Path(recorded).resolve())
                why = f"{recorded} was trained on other classes"
        job.manifest["notes"].append(f"QAT distilled from the FP32 model, not the run's teacher: {why}")
    return freeze_for_inference(job.model), SELF


class _Net(nn.Module):
    """A plain module around the folded torch.fx graph: NNCF sends a bare ``GraphModule`` to its torch.fx backend,
    which expects a ``torch.export`` graph and needs torchao; around it, NNCF's PyTorch backend hooks every op."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _fold_batchnorm(model: nn.Module) -> tuple[nn.Module, bool]:
    """A trainable copy of ``model`` with each BatchNorm folded into its conv, and whether torch.fx could fold them
    (one it cannot trace keeps its BatchNorms, and ONNX Runtime then runs those convs in FP32)."""
    from edgekd.models.freeze import freeze_for_inference

    frozen = freeze_for_inference(model)
    folded = not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in frozen.modules())
    return _Net(frozen.requires_grad_(True)), folded


@contextlib.contextmanager
def _torch_fake_quant() -> Iterator[None]:
    """NNCF's fake quantization in plain PyTorch ops, run eagerly.

    On CPU NNCF compiles a C++ extension on first use, minutes on a small machine, and its own fallback goes through
    ``torch.compile``; run eagerly, the reference functions take about the extension's time per step, with nothing
    to compile (docs/decisions.md, QAT: NNCF's fake quantization run eagerly).
    """
    from nncf.torch.quantization import extensions
    from nncf.torch.quantization.reference import ReferenceQuantizedFunctions

    namespace = extensions.QuantizedFunctionsCPU
    before = namespace._loaded_namespace
    namespace._loaded_namespace = ReferenceQuantizedFunctions  # what NNCF loads when it cannot compile its own
    try:
        with torch.compiler.set_stance("force_eager"):
            yield
    finally:
        namespace._loaded_namespace = before
