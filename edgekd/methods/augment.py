"""Batch-level augmentations for methods that distil on a second, augmented view (r2kd, sld)."""

from __future__ import annotations

import torch
from torch import nn

AUGMENTATIONS = ("cutmix", "mixup", "cutout", "autoaugment", "none")
AUTOAUGMENT_POLICIES = ("cifar10", "imagenet", "svhn")  # torchvision's AutoAugmentPolicy, by lower-case name


class BatchAutoAugment(nn.Module):
    """torchvision AutoAugment on a batch that is already normalised float.

    AutoAugment works on uint8 pixels, so each channel is mapped affinely to [0, 255] with the batch's own
    per-channel minimum and maximum, quantised, augmented, and mapped back by the exact inverse. For a batch
    of 8-bit images that spans black to white in every channel (nearly any real batch) this is exactly
    undoing (pixel / 255 - mean) / std, with no need to know the dataset's mean and std. One sub-policy is
    drawn per call and applied to the whole batch, as in the authors' release.
    """

    def __init__(self, policy: str = "cifar10") -> None:
        from torchvision.transforms import v2

        super().__init__()
        self.augment = v2.AutoAugment(v2.AutoAugmentPolicy[policy.upper()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo = x.amin(dim=(0, 2, 3), keepdim=True)
        span = (x.amax(dim=(0, 2, 3), keepdim=True) - lo).clamp_min(1e-12)
        pixels = ((x - lo) / span * 255).round().to(torch.uint8)
        return self.augment(pixels).to(x.dtype) / 255 * span + lo


def batch_augment(kind: str, policy: str, num_classes: int) -> nn.Module | None:
    """The augmented view's transform, applied to a whole normalised batch; None for ``none``."""
    from torchvision.transforms import v2  # imported on use: it costs seconds

    if kind == "cutmix":
        return v2.CutMix(num_classes=num_classes, alpha=1.0)
    if kind == "mixup":
        return v2.MixUp(num_classes=num_classes, alpha=0.2)  # the release's mixup alpha
    if kind == "cutout":
        # One square hole a quarter of the side (8 px at 32 px, as the release), zero = the mean colour.
        return v2.RandomErasing(p=1.0, scale=(1 / 16, 1 / 16), ratio=(1.0, 1.0), value=0.0)
    if kind == "autoaugment":
        return BatchAutoAugment(policy)
    return None  # "none": one view only


def augmented_view(augment: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x`` through ``augment``; the batch mixers (CutMix, MixUp) take the labels too and their mixed labels are
    dropped, since the view is scored against the teacher's logits of the same view, not against labels."""
    from torchvision.transforms import v2

    if isinstance(augment, (v2.CutMix, v2.MixUp)):
        return augment(x, y)[0]
    return augment(x)


def with_augmented_view(augment: nn.Module | None, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """cat([x, augmented x]) for the teachers' single call, or ``x`` alone when there is no augmentation."""
    return x if augment is None else torch.cat([x, augmented_view(augment, x, y)])
