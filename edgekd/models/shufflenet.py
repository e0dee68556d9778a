"""CIFAR ShuffleNet v1 (groups 3) and v2 (1.0x), as RepDistiller's ``ShuffleV1`` / ``ShuffleV2``.

Both use a 1x1 stride-1 stem (no max-pool) for 32x32 inputs. Key names follow RepDistiller so its
checkpoints load strictly; global pooling is adaptive (equal to its avg_pool2d(4) at 32x32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.models.registry import register_model


class ChannelShuffle(nn.Module):
    """Interleave channel groups: (g, C/g) -> (C/g, g). Written with reshape/transpose, which every
    exporter understands; a module, so that structured pruning can hand it to torch-pruning as one layer
    (traced as reshape/transpose, DepGraph loops on ShuffleV2)."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.reshape(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def _global_pool(x: torch.Tensor) -> torch.Tensor:
    return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


class ShuffleV1Unit(nn.Module):
    """Grouped 1x1 -> shuffle -> depthwise 3x3 -> grouped 1x1. Stride 2 concatenates an avg-pooled
    shortcut, so its branch produces ``cout - cin`` channels."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid = cout // 4
        g = 1 if cin == 24 else groups  # the stem has 24 channels: too few to group
        self.conv1 = nn.Conv2d(cin, mid, kernel_size=1, groups=g, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.shuffle1 = ChannelShuffle(g)
        self.conv2 = nn.Conv2d(mid, mid, kernel_size=3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1)) if stride == 2 else nn.Sequential()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.shuffle1(F.relu(self.bn1(self.conv1(x))))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        return F.relu(torch.cat([out, res], 1) if self.stride == 2 else out + res)


class ShuffleNetV1(nn.Module):
    """Stem, three stages of ShuffleV1Unit (groups 3), linear ``linear``."""

    # why `edgekd prune --prune-method structured` refuses it (read by edgekd.prune)
    structured_pruning_unsupported = (
        "torch-pruning removes the same channel index from every group of a grouped conv, which only the first "
        "unit's inner channels allow: every other unit's pass a 3-way channel shuffle between two 3-group convs, "
        "and the 3-group 1x1 convs split each stage's concatenated channels at different points (216 + 24 "
        "channels grouped 72 and 80 apiece)"
    )

    def __init__(
        self,
        num_classes: int,
        widths: tuple[int, ...] = (240, 480, 960),
        blocks: tuple[int, ...] = (4, 8, 4),
        groups: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        cin = 24
        stages = []
        for cout, n in zip(widths, blocks):
            units = [ShuffleV1Unit(cin, cout - cin, 2, groups)]
            units += [ShuffleV1Unit(cout, cout, 1, groups) for _ in range(n - 1)]
            stages.append(nn.Sequential(*units))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(_global_pool(x))


class ShuffleV2Unit(nn.Module):
    """Split channels in half, transform the second half (1x1, dw 3x3, 1x1), concat, shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.conv1 = nn.Conv2d(half, half, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, kernel_size=3, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[1] // 2
        keep, work = x[:, :half], x[:, half:]
        work = F.relu(self.bn1(self.conv1(work)))
        work = F.relu(self.bn3(self.conv3(self.bn2(self.conv2(work)))))
        return self.shuffle(torch.cat([keep, work], 1))


class ShuffleV2Down(nn.Module):
    """Stride-2 unit: both branches see the whole input, each gives half of ``cout``."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = cout // 2
        self.conv1 = nn.Conv2d(cin, cin, kernel_size=3, stride=2, padding=1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv2 = nn.Conv2d(cin, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(cin, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, kernel_size=3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.bn4(self.conv4(F.relu(self.bn3(self.conv3(x)))))
        right = F.relu(self.bn5(self.conv5(right)))
        return self.shuffle(torch.cat([left, right], 1))


class ShuffleNetV2(nn.Module):
    """Stem, three stages (a ShuffleV2Down then ShuffleV2Units), 1x1 head conv ``conv2``, ``linear``."""

    def __init__(
        self, num_classes: int, widths: tuple[int, ...] = (116, 232, 464, 1024), blocks: tuple[int, ...] = (3, 7, 3)
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        cin = 24
        stages = []
        for cout, n in zip(widths[:3], blocks):
            stages.append(nn.Sequential(ShuffleV2Down(cin, cout), *(ShuffleV2Unit(cout) for _ in range(n))))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = nn.Conv2d(cin, widths[3], kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(widths[3])
        self.linear = nn.Linear(widths[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.linear(_global_pool(x))


@register_model("ShuffleV1")
def shufflev1(num_classes: int) -> ShuffleNetV1:
    return ShuffleNetV1(num_classes)


@register_model("ShuffleV2")
def shufflev2(num_classes: int) -> ShuffleNetV2:
    return ShuffleNetV2(num_classes)
