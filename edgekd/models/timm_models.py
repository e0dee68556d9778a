"""timm's classifiers under ``timm/<name>`` (the edge families: MobileNetV3/V4, EfficientNet, RepViT, FastViT, ...),
built by timm itself, and their published weights through timm's own loading, with the preprocessing they were
trained with (timm's data config: input size, crop fraction, interpolation, mean, std)."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

from torch import nn

from edgekd.contracts.preprocessing import PreprocessSpec
from edgekd.errors import EdgeKDError, one_line
from edgekd.models.registry import register_model

TIMM_PREFIX = "timm/"


def _build(name: str, num_classes: int) -> nn.Module:
    import timm

    return timm.create_model(name, pretrained=False, num_classes=num_classes)


def _native_size(name: str) -> tuple[int, int, int]:
    """The input size of the architecture's default pretrained config (224 when it has none)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    size = tuple(cfg.input_size) if cfg is not None and cfg.input_size else (3, 224, 224)
    return (3, int(size[1]), int(size[2]))


def register_all() -> None:
    """Register every architecture timm ships."""
    import timm  # seconds: only when a timm/ model or the whole list is first asked for

    for name in timm.list_models():
        register_model(TIMM_PREFIX + name, input_size=_native_size(name))(partial(_build, name))


def data_spec(model: nn.Module) -> PreprocessSpec:
    """timm's eval transform for ``model`` (its pretrained config) as edgekd's spec: resize the shorter side to
    ``floor(size / crop_pct)``, centre-crop ``size``, normalise."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    _, height, width = cfg["input_size"]
    if cfg.get("crop_mode", "center") != "center":
        raise EdgeKDError(f"timm crop_mode {cfg['crop_mode']!r} is not one edgekd serves; only 'center' is")
    return PreprocessSpec(
        size=(height, width), mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), resize_policy="shorter_side",
        shorter_side=math.floor(max(height, width) / cfg["crop_pct"]), interpolation=cfg["interpolation"],
    )


def pretrained(name: str, num_classes: int, choice: str) -> tuple[nn.Module, PreprocessSpec, str]:
    """``name`` with ``num_classes`` outputs from weights ``choice`` through timm's own loading: ``DEFAULT`` (the
    architecture's default tag), a tag (``lamb_in1k``), or a file (``pretrained_cfg_overlay``, offline). timm resets
    the head when the classes differ."""
    import timm

    if Path(choice).is_file():
        arch, overlay, source = name, {"file": str(Path(choice).resolve())}, str(Path(choice).resolve())
    else:
        arch = name if choice == "DEFAULT" else f"{name}.{choice}"
        overlay, source = None, None
    try:
        model = timm.create_model(arch, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay=overlay)
    except RuntimeError as e:  # timm: an unknown tag; torch: a file of another architecture
        raise EdgeKDError(f"timm cannot start {name} from {choice}: {one_line(e, 200)}") from None
    except OSError as e:  # huggingface_hub: not in its cache and no network (LocalEntryNotFoundError and kin)
        from huggingface_hub.constants import HF_HUB_CACHE

        hub_id = timm.models.get_pretrained_cfg(arch).hf_hub_id if timm.models.get_pretrained_cfg(arch) else arch
        raise EdgeKDError(
            f"timm's weights {hub_id} are not in the Hugging Face cache ({HF_HUB_CACHE}) and cannot be downloaded "
            f"({one_line(e, 120)}); download them once online, or pass --weights FILE"
        ) from None
    return model, data_spec(model), source or model.pretrained_cfg.get("hf_hub_id") or arch
