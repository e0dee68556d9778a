"""Start a model from pretrained weights (``--pretrained``, ``--weights NAME|FILE``) with a head for the data's classes.

The weights come from the library that publishes them (torchvision for ``tv/`` models, from torch.hub's cache; timm
for ``timm/`` models, through its own loading) or from a local ``torch.save`` file. Every tensor whose name and shape
fit the new model is copied; the classifier head, which has as many outputs as the weights' own classes, keeps its
fresh initialisation. The weights' preprocessing (resize the shorter side, centre-crop, their mean and std) goes with
them into the run.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from edgekd.contracts.preprocessing import PreprocessSpec
from edgekd.errors import EdgeKDError
from edgekd.models import timm_models, torchvision_models
from edgekd.models.checkpoint import read_state_dict
from edgekd.models.registry import TORCHVISION_PREFIX, canonical_name, create_model

DEFAULT = "DEFAULT"  # --pretrained: the architecture's default published weights
MAX_NEW_TENSORS = 4  # a head is a weight and a bias (two for a two-layer head); more means the weights do not fit


def pretrained_model(
    arch: str, num_classes: int, choice: str, *, whole: bool = False
) -> tuple[nn.Module, PreprocessSpec | None, str]:
    """``arch`` with ``num_classes`` outputs, started from weights ``choice``: ``DEFAULT``, a published weights name,
    or a file. Returns the model, the weights' preprocessing (None: the dataset's own), and where they came from.

    ``whole``: every tensor, the head included, must come from the weights (a teacher has to know the data's
    classes already; a fresh head would teach noise)."""
    arch = canonical_name(arch)
    if arch.startswith(timm_models.TIMM_PREFIX):  # timm loads and re-heads its own weights
        model, spec, source = timm_models.pretrained(arch[len(timm_models.TIMM_PREFIX):], num_classes, choice)
        model.arch_name = arch
        own = model.pretrained_cfg.get("num_classes", num_classes)
        if whole and own != num_classes:
            raise _not_whole(arch, source, num_classes, f"their head has {own} classes")
        return model, spec, source
    model = create_model(arch, num_classes)
    tv_name = model.arch_name[len(TORCHVISION_PREFIX):] if model.arch_name.startswith(TORCHVISION_PREFIX) else None
    if Path(choice).is_file():
        state, spec, source, attributes = read_state_dict(choice), None, str(Path(choice).resolve()), {}
        if tv_name is not None:
            spec = torchvision_models.default_spec(tv_name)  # a file of torchvision weights expects their inputs
    elif tv_name is not None:
        state, spec, source, attributes = torchvision_models.published_weights(tv_name, choice)
    elif choice == DEFAULT:
        raise EdgeKDError(f"{model.arch_name} has no published weights; pass --weights FILE (a torch.save state_dict)")
    else:
        raise EdgeKDError(f"--weights {choice}: no such file, and {model.arch_name} has no published weights")
    fresh = transplant(model, state, source)
    if whole and fresh:
        raise _not_whole(model.arch_name, source, num_classes, f"{', '.join(fresh[:2])} did not fit")
    if len(fresh) > MAX_NEW_TENSORS:
        raise EdgeKDError(
            f"the weights {source} do not fit {model.arch_name}: {len(fresh)} of its tensors found no match "
            f"({', '.join(fresh[:3])}, ...); pass weights of this architecture"
        )
    for name, value in attributes.items():
        setattr(model, name, value)
    return model, spec, source


def _not_whole(arch: str, source: str, num_classes: int, why: str) -> EdgeKDError:
    return EdgeKDError(
        f"the teacher weights {source} do not fit a {num_classes}-class {arch} whole ({why}): a teacher must already "
        f"know the data's classes; fine-tune it first (edgekd train --model {arch} --pretrained ...) and pass that "
        "run as --teacher"
    )


def transplant(model: nn.Module, state: dict, source: str) -> list[str]:
    """Copy every tensor of ``state`` whose name and shape match into ``model``; return the names left as they were."""
    own = model.state_dict()
    fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not fits:
        raise EdgeKDError(f"no tensor of {source} fits {getattr(model, 'arch_name', type(model).__name__)}")
    model.load_state_dict(fits, strict=False)
    return [k for k in own if k not in fits and own[k].is_floating_point()]
