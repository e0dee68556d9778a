"""Frozen inference copies of a network for the teachers: eval mode, no gradients, BatchNorm folded into its conv.

A teacher only ever runs forward in eval mode, so each Conv -> BatchNorm pair is one affine map and can be one
conv: torch.fx's ``fuse`` rewrites the graph and drops the BatchNorm ops (one memory pass each). Networks that
torch.fx cannot trace keep their BatchNorms and are only frozen; the logits are the same either way up to
float rounding.
"""

from __future__ import annotations

import copy
import logging

from torch import nn
from torch.fx.experimental.optimization import fuse

log = logging.getLogger(__name__)


def freeze_for_inference(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` (eval, ``requires_grad=False``) with conv-bn folded where fx can trace it."""
    model = copy.deepcopy(model).eval()
    try:
        folded = fuse(model, inplace=True)
    except Exception as e:  # torch.fx raises TraceError, TypeError, ... for control flow it cannot follow
        log.debug("conv-bn folding skipped for %s: %s", type(model).__name__, e)
        folded = model
    return folded.eval().requires_grad_(False)
