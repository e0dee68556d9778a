"""torchvision's ImageNet classifiers under ``tv/<name>``, built without weights, and their published weights
(``published_weights``) with the preprocessing they were trained with, for ``--pretrained`` / ``--weights``.
"""

from __future__ import annotations

import os
import urllib.error
from functools import partial
from pathlib import Path

from torch import nn

from edgekd.contracts.preprocessing import PreprocessSpec
from edgekd.errors import EdgeKDError, one_line
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


def published_weights(name: str, choice: str) -> tuple[dict, PreprocessSpec, str, dict]:
    """torchvision's weights ``choice`` (an enum member such as ``IMAGENET1K_V1``, or ``DEFAULT``) of model ``name``:
    (state_dict, the weights' own preprocessing, their full name, attributes the weights set on the model).

    The file comes from torch.hub's cache (``$TORCH_HOME/hub/checkpoints``), downloaded by torchvision when it is not
    there; offline, a missing file is a one-line error that names it and where to put it.
    """
    import torch
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(name)
    except ValueError:
        raise EdgeKDError(f"torchvision publishes no weights for {name}; pass --weights FILE") from None
    member = choice.rsplit(".", 1)[-1]
    if member not in enum.__members__:
        raise EdgeKDError(f"{enum.__name__} has no {member!r}; choose one of {', '.join(enum.__members__)}")
    weights = enum[member]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    try:
        source = torchvision.models.get_model(name, weights=weights)  # torchvision's own loading (key fix-ups included)
    except (OSError, urllib.error.URLError) as e:
        raise EdgeKDError(
            f"{weights} is not in the weights cache and cannot be downloaded ({one_line(e, 120)}): fetch {weights.url} "
            f"and put it at {cached} (or set TORCH_HOME to a folder whose hub/checkpoints holds it)"
        ) from None
    attributes = {k: getattr(source, k) for k in ("transform_input",) if hasattr(source, k)}
    return source.state_dict(), transforms_spec(weights.transforms()), str(weights), attributes


def transforms_spec(transforms: object) -> PreprocessSpec:
    """torchvision's ``ImageClassification`` eval transform as edgekd's preprocessing spec: resize the shorter side,
    centre-crop, scale to [0, 1], normalise."""
    crop = transforms.crop_size[0]
    return PreprocessSpec(
        size=(crop, crop), mean=tuple(transforms.mean), std=tuple(transforms.std), resize_policy="shorter_side",
        shorter_side=transforms.resize_size[0], interpolation=transforms.interpolation.value,
    )


def default_spec(name: str) -> PreprocessSpec:
    """The preprocessing of model ``name``'s default published weights."""
    import torchvision

    return transforms_spec(torchvision.models.get_model_weights(name).DEFAULT.transforms())
