"""The one preprocessing spec (docs/design.md §4): how an image becomes a model's input, read by every stage that feeds
a model.

The training side builds its eval transform from it (torchvision v2), the exporter writes it into the manifest,
and the server (PIL + numpy) and ``val``/``predict`` rebuild the same steps from the manifest, so a model is
served exactly as it was evaluated:

1. resize: ``exact`` to [H, W], or ``shorter_side`` to S (the other side scaled to keep the aspect ratio, rounded
   down, as torchvision's ``Resize(S)``) and then a centre crop of [H, W] (offsets rounded as ``CenterCrop``);
2. ``interpolation`` names the resampling filter;
3. 8-bit values times ``scale``, minus ``mean``, divided by ``std``, per channel in ``channel_order``;
4. ``layout`` NCHW.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgekd.contracts.values import is_count, is_number
from edgekd.errors import EdgeKDError

RESIZE_POLICIES = ("exact", "shorter_side")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
CHANNEL_ORDERS = ("RGB", "BGR")
LAYOUTS = ("NCHW",)


@dataclass(frozen=True)
class PreprocessSpec:
    """Everything between an RGB image and the float32 input tensor; ``size`` is the input's (H, W)."""

    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize_policy: str = "exact"
    shorter_side: int | None = None  # with resize_policy "shorter_side": the side length before the centre crop
    interpolation: str = "bilinear"
    scale: float = 1 / 255
    channel_order: str = "RGB"
    layout: str = "NCHW"

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of an image of that size after the resize step (before any crop)."""
        if self.resize_policy == "exact":
            return self.size[1], self.size[0]
        side = int(self.shorter_side or 0)
        if width <= height:
            return side, int(side * height / width)
        return int(side * width / height), side

    def crop_box(self, width: int, height: int) -> tuple[int, int, int, int] | None:
        """(left, top, right, bottom) of the centre crop of a resized image of that size; None: no crop."""
        if self.resize_policy == "exact":
            return None
        crop_h, crop_w = self.size
        top, left = int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0))
        return left, top, left + crop_w, top + crop_h

    def to_dict(self) -> dict[str, Any]:
        """The form stored in ``model.json`` and ``manifest.json`` (``resize`` is [H, W] for ``exact``)."""
        geometry: dict[str, Any] = {"resize_policy": self.resize_policy}
        if self.resize_policy == "exact":
            geometry["resize"] = list(self.size)
        else:
            geometry.update(shorter_side=self.shorter_side, center_crop=list(self.size))
        return {
            **geometry,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
            "channel_order": self.channel_order,
            "layout": self.layout,
            "scale": self.scale,
        }

    @classmethod
    def from_dict(cls, pre: Any, default_size: Any = None, *, where: str = "manifest preprocessing",
                  fix: str = "re-run `edgekd export`") -> PreprocessSpec:
        """Read and check a stored spec; ``default_size`` ([H, W]) stands in for a missing ``resize``.

        Keys left out take the defaults every edgekd version wrote, so older files read the same.
        """
        if not isinstance(pre, dict):
            raise EdgeKDError(f"{where} is {type(pre).__name__}, not an object; {fix}")
        policy = pre.get("resize_policy", "exact")
        if policy not in RESIZE_POLICIES:
            raise EdgeKDError(f"{where} resize_policy {policy!r} is not one of {', '.join(RESIZE_POLICIES)}; {fix}")
        size = pre.get("resize") or default_size if policy == "exact" else pre.get("center_crop")
        if not isinstance(size, (list, tuple)) or len(size) != 2 or not all(is_count(s) for s in size):
            raise EdgeKDError(f"{where} has no usable resize (got {size!r}); {fix}")
        shorter = pre.get("shorter_side") if policy == "shorter_side" else None
        if policy == "shorter_side" and not (is_count(shorter) and shorter >= max(size)):
            raise EdgeKDError(
                f"{where} shorter_side {shorter!r} must be a whole number >= the crop {list(size)}; {fix}")
        layout, order = pre.get("layout", "NCHW"), pre.get("channel_order", "RGB")
        interpolation = pre.get("interpolation", "bilinear")
        if layout not in LAYOUTS or order not in CHANNEL_ORDERS or interpolation not in INTERPOLATIONS:
            raise EdgeKDError(
                f"{where} layout={layout} channel_order={order} interpolation={interpolation} is not "
                f"supported; edgekd handles {', '.join(LAYOUTS)}, {'/'.join(CHANNEL_ORDERS)} and "
                f"{', '.join(INTERPOLATIONS)}"
            )
        mean, std, scale = pre.get("mean", [0.0, 0.0, 0.0]), pre.get("std", [1.0, 1.0, 1.0]), pre.get("scale", 1 / 255)
        if (not all(isinstance(v, list) and len(v) == 3 and all(map(is_number, v)) for v in (mean, std))
                or not is_number(scale)):
            raise EdgeKDError(
                f"{where} needs three numbers each for mean and std and a number for scale (got mean="
                f"{mean!r}, std={std!r}, scale={scale!r}); {fix}"
            )
        if not min(std) > 0:
            raise EdgeKDError(f"{where} std {std} must be positive; {fix}")
        return cls(
            size=(int(size[0]), int(size[1])), mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std),
            resize_policy=policy, shorter_side=shorter, interpolation=interpolation, scale=float(scale),
            channel_order=order, layout=layout,
        )
