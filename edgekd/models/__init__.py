"""Model registry: the RepDistiller/mdistiller CIFAR family and torchvision's ImageNet models by name.

Training side only (imports torch). Importing this package defines the CIFAR classes but builds
nothing; torchvision is imported the first time a ``tv/`` model or the full list is asked for.
"""

from edgekd.models import cifar_resnet, mobilenetv2, shufflenet, vgg, wrn  # noqa: F401  (registers the CIFAR family)
from edgekd.models import torchvision_models
from edgekd.models.checkpoint import load_checkpoint_file
from edgekd.models.registry import (
    count_params, create_model, list_models, model_summary, register_lazy_source, register_model,
)

register_lazy_source(torchvision_models.register_all)

__all__ = ["count_params", "create_model", "list_models", "load_checkpoint_file", "model_summary", "register_model"]
