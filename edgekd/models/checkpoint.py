"""Load weights that were trained elsewhere (RepDistiller/mdistiller teachers, plain torch.save files).

Accepted layouts: ``{"model": state_dict, ...}`` (RepDistiller's ``ckpt_epoch_240.pth``),
``{"state_dict": state_dict, ...}``, ``{"student": state_dict, ...}`` (edgekd's own ``checkpoint.pt``, e.g. of a
run stopped before its final weights) and a bare state_dict, with or without the ``module.`` prefix
DataParallel/DDP adds (or ``_orig_mod.`` from torch.compile). Everything is checked before a single
tensor is copied, so a rejected checkpoint leaves the model as it was.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from edgekd.errors import EdgeKDError, one_line

_WRAPPER_KEYS = ("model", "state_dict", "student")
_PREFIXES = ("module.", "_orig_mod.")


def _listing(keys: list[str], limit: int = 3) -> str:
    more = f", ... {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _extract_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise EdgeKDError(
            f"checkpoint {path} holds no state_dict (expected a dict of tensors, or one under 'model', "
            "'state_dict' or 'student'); save it with torch.save(model.state_dict(), path)"
        )
    state = dict(obj)
    for prefix in _PREFIXES:
        consume_prefix_in_state_dict_if_present(state, prefix)
    return state


def _mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys ({_listing(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({_listing(unexpected)})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches ({_listing(shapes)})")
    return "; ".join(parts) or None


def load_problem(e: BaseException) -> str:
    """Why ``torch.load(..., weights_only=True)`` refused a file, without torch's advice to turn the safety off."""
    text = str(e)
    if text.startswith("Weights only load failed"):  # a paragraph of advice, then the reason, then a docs link
        body = text.split("Check the documentation")[0]
        detail = (body.split("WeightsUnpickler error:", 1)[1] if "WeightsUnpickler error:" in body
                  else body.split("\n", 1)[-1])
        return f"it holds more than tensors: {' '.join(detail.split())}; edgekd loads weights only, never pickled code"
    return one_line(e)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state_dict in a ``torch.save`` file, in any of the layouts above, read with ``weights_only=True`` on CPU:
    a checkpoint cannot run code on load. Raises EdgeKDError for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise EdgeKDError(f"checkpoint {path} not found; pass the path of a .pth/.pt file")
    try:
        with warnings.catch_warnings():  # a raw pickle's protocol warning would come before the one-line refusal
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types for corrupt input (pickle, zip, EOF, runtime)
        raise EdgeKDError(
            f"cannot read checkpoint {path} ({load_problem(e)}); expected a file written by torch.save"
        ) from e
    return _extract_state_dict(obj, path)


def load_checkpoint_file(model: nn.Module, path: str | Path) -> None:
    """Load a foreign checkpoint into ``model`` strictly (every key, every shape)."""
    state = read_state_dict(path)
    problem = _mismatch(model, state)
    if problem:
        arch = getattr(model, "arch_name", type(model).__name__)
        raise EdgeKDError(
            f"checkpoint {path} does not match {arch}: {problem}; pass the architecture it was trained as "
            "(e.g. --teacher-arch)"
        )
    model.load_state_dict(state, strict=True)
