"""Name -> model constructor registry (timm style), so configs and the CLI pick architectures by name.

Lookup is case-insensitive because the CIFAR names people copy from RepDistiller/mdistiller configs
mix cases (``resnet8x4``, ``ResNet50``, ``MobileNetV2``). torchvision's ~80 models are registered on
first need only: importing torchvision costs seconds and most runs never ask for an ImageNet model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from edgekd.errors import EdgeKDError, one_line
from edgekd.registries import MODELS

TORCHVISION_PREFIX = "tv/"


@dataclass(frozen=True)
class ModelEntry:
    """A registered constructor and the input size it was designed for (used by model_summary)."""

    name: str
    build: Callable[[int], nn.Module]
    input_size: tuple[int, int, int]



def register_model(
    name: str | None = None, *, input_size: tuple[int, int, int] = (3, 32, 32)
) -> Callable[[Callable[[int], nn.Module]], Callable[[int], nn.Module]]:
    """Decorator: make ``fn(num_classes) -> nn.Module`` available to create_model under ``name``.

    Without a name the function's own name is used. Names must stay unique regardless of case.
    """

    def wrap(fn: Callable[[int], nn.Module]) -> Callable[[int], nn.Module]:
        MODELS.register(ModelEntry(name or fn.__name__, fn, input_size))
        return fn

    return wrap


def canonical_name(name: str) -> str:
    """The registered spelling of a model name (names are case-insensitive); an unknown name is an EdgeKDError."""
    return MODELS.lookup(name).name


def list_models() -> list[str]:
    """All registered names: the CIFAR family first, then timm's ``timm/...`` and torchvision's ``tv/...`` models."""
    return [MODELS[key].name for key in MODELS.names()]


MAX_CLASSES = 100_000  # ImageNet-21k has 21,841; a classifier head for 10**8 classes would take gigabytes


def create_model(name: str, num_classes: int) -> nn.Module:
    """Build a freshly initialised model by name; no weights are ever downloaded.

    The canonical name is kept on the model as ``arch_name`` so later stages and error messages can
    refer to it.
    """
    entry = MODELS.lookup(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 1 <= num_classes <= MAX_CLASSES:
        raise EdgeKDError(f"num_classes must be an integer from 1 to {MAX_CLASSES:,}, got {num_classes!r}")
    model = entry.build(num_classes)
    model.arch_name = entry.name
    return model


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (shared parameters counted once), the figure papers report."""
    return sum(p.numel() for p in model.parameters())


def model_summary(
    name: str, num_classes: int, input_size: tuple[int, int, int] | None = None
) -> dict[str, object]:
    """Parameters and MACs of a model for one image, counted by torch-pruning.

    ``input_size`` (C, H, W) defaults to the size the architecture was designed for: 32x32 for the
    CIFAR family, the evaluation crop of torchvision's published weights (224 for most) for ``tv/``.
    """
    entry = MODELS.lookup(name)
    size = tuple(input_size) if input_size is not None else entry.input_size
    model = create_model(name, num_classes).eval()
    try:
        macs, params = tp.utils.count_ops_and_params(model, torch.zeros(1, *size))
    except (RuntimeError, ValueError, AssertionError) as e:  # what conv/pool/ViT checks raise on too-small inputs
        first = one_line(e, first_line=True)
        raise EdgeKDError(
            f"{entry.name} cannot run on input size {size}: {first}; pass an input size it accepts "
            f"(it was designed for {entry.input_size})"
        ) from e
    return {"name": entry.name, "params": int(params), "macs": int(macs), "input_size": size}
