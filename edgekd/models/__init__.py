"""Model registry: the RepDistiller/mdistiller CIFAR family, torchvision's ImageNet models (``tv/<name>``) and timm's
(``timm/<name>``) by name.

Training side only (imports torch). Each family's module is imported on the first lookup of one of its names (the
``edgekd.models`` entry points in ``pyproject.toml``); torchvision and timm the first time one of their models or
the full list is asked for.
"""

from edgekd.models.checkpoint import load_checkpoint_file
from edgekd.models.registry import (
    count_params,
    create_model,
    list_models,
    model_summary,
    register_model,
)

__all__ = ["count_params", "create_model", "list_models", "load_checkpoint_file", "model_summary", "register_model"]
