"""CIFAR VGGs with batch norm and a single linear classifier (vgg8, vgg11, vgg13, vgg16, vgg19).

These are RepDistiller's ``vgg*_bn`` (registered there as ``vgg8`` ... ``vgg19``): five conv blocks
``block0..block4`` whose last ReLU is applied in forward, so each block's state_dict indices match.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.models.registry import register_model

_CONFIGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


def _block(cin: int, widths: tuple[int, ...]) -> nn.Sequential:
    """conv-BN-ReLU repeated, without the final ReLU (forward applies it)."""
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Conv2d(cin, w, kernel_size=3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        cin = w
    return nn.Sequential(*layers[:-1])


@torch.fx.wrap
def _pool_if_large(x: torch.Tensor, large: bool) -> torch.Tensor:
    """RepDistiller's ``pool3``, applied only to inputs of 64 px or more; one fx leaf, so the net stays traceable."""
    return F.max_pool2d(x, kernel_size=2, stride=2) if large else x


class VGG(nn.Module):
    """Four 2x2 max-pools between blocks (the fourth only for inputs of 64 px or more) and global average pooling."""

    def __init__(self, cfg: tuple[tuple[int, ...], ...], num_classes: int) -> None:
        super().__init__()
        ins = (3,) + tuple(widths[-1] for widths in cfg[:-1])
        self.block0, self.block1, self.block2, self.block3, self.block4 = (_block(c, w) for c, w in zip(ins, cfg))
        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cfg[-1][-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        large = x.shape[2] >= 64  # input size decides, as in RepDistiller's `if h == 64`
        x = self.pool0(F.relu(self.block0(x)))
        x = self.pool1(F.relu(self.block1(x)))
        x = self.pool2(F.relu(self.block2(x)))
        x = F.relu(self.block3(x))
        x = _pool_if_large(x, large)
        x = F.relu(self.block4(x))
        return self.classifier(torch.flatten(self.pool4(x), 1))


@register_model("vgg8")
def vgg8(num_classes: int) -> VGG:
    return VGG(_CONFIGS["vgg8"], num_classes)


@register_model("vgg11")
def vgg11(num_classes: int) -> VGG:
    return VGG(_CONFIGS["vgg11"], num_classes)


@register_model("vgg13")
def vgg13(num_classes: int) -> VGG:
    return VGG(_CONFIGS["vgg13"], num_classes)


@register_model("vgg16")
def vgg16(num_classes: int) -> VGG:
    return VGG(_CONFIGS["vgg16"], num_classes)


@register_model("vgg19")
def vgg19(num_classes: int) -> VGG:
    return VGG(_CONFIGS["vgg19"], num_classes)
