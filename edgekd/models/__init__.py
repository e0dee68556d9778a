"""Model registry: the RepDistiller/mdistiller CIFAR family, torchvision's ImageNet models (``tv/<name>``) and timm's
(``timm/<name>``) by name.

Training side only (imports torch). Importing this package defines the CIFAR classes but builds nothing; torchvision
and timm are imported the first time one of their models or the full list is asked for.
"""

from edgekd.models import cifar_resnet, mobilenetv2, shufflenet, timm_models, torchvision_models, vgg, wrn  # noqa: F401  (registers the CIFAR family)
from edgekd.models.checkpoint import load_checkpoint_file
from edgekd.models.registry import (
    count_params,
    create_model,
    list_models,
    model_summary,
    register_lazy_source,
    register_model,
)

register_lazy_source(torchvision_models.TORCHVISION_PREFIX, torchvision_models.register_all)
register_lazy_source(timm_models.TIMM_PREFIX, timm_models.register_all)

__all__ = ["count_params", "create_model", "list_models", "load_checkpoint_file", "model_summary", "register_model"]
