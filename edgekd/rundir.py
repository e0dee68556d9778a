"""Save and rebuild the network of a run dir (its files and ``model.json`` reader: ``edgekd.contracts.rundir``).

A pruned model records the shape of every resized layer, so the smaller channel counts survive a save/load round trip.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgekd.contracts.rundir import DESCRIPTION, WEIGHTS, read_description
from edgekd.contracts.values import is_count
from edgekd.errors import EdgeKDError, one_line
from edgekd.fsutil import atomic_path, write_json


def model_description(arch: str, bundle, **extra: Any) -> dict[str, Any]:
    """The ``model.json`` content for a model of ``arch`` trained on the data ``bundle``."""
    from edgekd import __version__

    return {
        "arch": arch,
        "num_classes": bundle.num_classes,
        "input_size": list(bundle.input_size),
        "mean": list(bundle.mean),
        "std": list(bundle.std),
        "preprocessing": bundle.preprocessing.to_dict(),
        "class_names": list(bundle.class_names),
        "dataset": bundle.spec,
        "dataset_options": bundle.options,
        "edgekd_version": __version__,
        **extra,
    }


def layer_shapes(model: nn.Module) -> dict[str, dict[str, int]]:
    """Channel/feature counts of every Conv2d, BatchNorm2d and Linear (what structured pruning changes)."""
    shapes: dict[str, dict[str, int]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            shapes[name] = {"in": m.in_channels, "out": m.out_channels, "groups": m.groups}
        elif isinstance(m, nn.BatchNorm2d):
            shapes[name] = {"features": m.num_features}
        elif isinstance(m, nn.Linear):
            shapes[name] = {"in": m.in_features, "out": m.out_features}
    return shapes


_SHAPE_KEYS = {nn.Conv2d: ("in", "out", "groups"), nn.BatchNorm2d: ("features",), nn.Linear: ("in", "out")}


def apply_layer_shapes(model: nn.Module, shapes: dict[str, dict[str, int]],
                       weights: dict[str, tuple[int, ...]]) -> nn.Module:
    """Resize layers in place to recorded shapes; the weights are then loaded over them.

    Each recorded shape is checked against the tensor shapes in the weights file (``weights``: name -> shape)
    before anything is allocated, so a corrupt ``model.json`` cannot ask for a huge layer.
    """
    modules = dict(model.named_modules())
    for name, s in shapes.items():
        m = modules.get(name)
        if m is None:
            raise EdgeKDError(f"model.json names layer {name!r}, which {type(model).__name__} does not have")
        keys = next((k for t, k in _SHAPE_KEYS.items() if isinstance(m, t)), ())
        if not isinstance(s, dict) or any(not is_count(s.get(k)) for k in keys):
            raise EdgeKDError(
                f"model.json layer_shapes[{name!r}] needs positive integers {', '.join(keys)}; the run dir is corrupt")
        if isinstance(m, nn.Conv2d):
            expected = (s["out"], s["in"] // s["groups"], *m.kernel_size)
        elif isinstance(m, nn.BatchNorm2d):
            expected = (s["features"],)
        elif isinstance(m, nn.Linear):
            expected = (s["out"], s["in"])
        else:
            continue
        if weights.get(f"{name}.weight", expected) != expected or (isinstance(m, nn.Conv2d) and s["in"] % s["groups"]):
            raise EdgeKDError(
                f"model.json layer_shapes[{name!r}] ({s}) does not match {WEIGHTS} ({name}.weight "
                f"{weights.get(name + '.weight')}); the run dir is corrupt"
            )
        if isinstance(m, nn.Conv2d):
            m.in_channels, m.out_channels, m.groups = s["in"], s["out"], s["groups"]
            m.weight = nn.Parameter(m.weight.new_empty(expected))
            if m.bias is not None:
                m.bias = nn.Parameter(m.bias.new_empty(s["out"]))
        elif isinstance(m, nn.BatchNorm2d):
            n = s["features"]
            m.num_features = n
            if m.affine:
                m.weight = nn.Parameter(m.weight.new_empty(n))
                m.bias = nn.Parameter(m.bias.new_empty(n))
            if m.track_running_stats:
                m.running_mean = m.running_mean.new_zeros(n)
                m.running_var = m.running_var.new_ones(n)
        else:
            m.in_features, m.out_features = s["in"], s["out"]
            m.weight = nn.Parameter(m.weight.new_empty(expected))
            if m.bias is not None:
                m.bias = nn.Parameter(m.bias.new_empty(s["out"]))
    return model


def save_model(run_dir: str | Path, model: nn.Module, description: dict[str, Any]) -> None:
    """Write ``model.safetensors`` and ``model.json`` atomically (a pruned model also records its layer shapes)."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    model = getattr(model, "module", model)  # unwrap DDP
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(run_dir / WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"arch": description["arch"]})
    write_json(run_dir / DESCRIPTION, description)


def load_model(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a run dir in eval mode, with its description."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from edgekd.models import create_model

    run_dir = Path(run_dir)
    desc = read_description(run_dir)
    model = create_model(desc["arch"], desc["num_classes"])
    try:
        state = load_file(str(run_dir / WEIGHTS), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise EdgeKDError(f"{run_dir / WEIGHTS} cannot be read ({e}); the run dir is corrupt") from None
    if desc.get("layer_shapes"):
        apply_layer_shapes(model, desc["layer_shapes"], {k: tuple(v.shape) for k, v in state.items()})
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise EdgeKDError(f"{run_dir / WEIGHTS} does not match {desc['arch']}: {one_line(e)}") from None
    return model.to(device).eval(), desc
