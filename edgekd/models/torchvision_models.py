"""torchvision's ImageNet classifiers under ``tv/<name>``, always built without weights.

edgekd never downloads weights: a torchvision model is trained (or distilled) from scratch here, or
loaded from a local checkpoint with ``load_checkpoint_file``.
"""

from __future__ import annotations

from functools import partial

from torch import nn

from edgekd.models.registry import TORCHVISION_PREFIX, register_model

# GoogLeNet and Inception v3 return (logits, aux...) tuples in training mode unless the auxiliary heads
# are off; every edgekd model returns logits only. init_weights=True is their documented default
# without weights, stated here to silence the warning about it.
_EXTRA_KWARGS: dict[str, dict[str, bool]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


def _build(name: str, num_classes: int) -> nn.Module:
    import torchvision

    return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **_EXTRA_KWARGS.get(name, {}))


def _native_size(name: str) -> tuple[int, int, int]:
    """The smallest evaluation crop of the model's published weights.

    The smallest one, because ViT-style models built without weights are fixed to 224 even where
    the default weights were fine-tuned at a larger size.
    """
    import torchvision
    crops = [w.transforms().crop_size[0] for w in torchvision.models.get_model_weights(name)]
    side = min(crops) if crops else 224
    return (3, side, side)


def register_all() -> None:
    """Register every classification model torchvision ships (detection/segmentation/video excluded)."""
    import torchvision  # seconds: only when a tv/ model or the whole list is first asked for

    for name in torchvision.models.list_models(module=torchvision.models):
        register_model(TORCHVISION_PREFIX + name, input_size=_native_size(name))(partial(_build, name))
