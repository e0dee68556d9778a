"""Pruning: a smaller copy of a trained model, for R2KD's pruned teacher and for `edgekd prune`.

``structured`` removes whole channels with torch-pruning's DepGraph (so the copy is really smaller and
faster); ``l1-unstructured`` zeroes the smallest weights of every Conv/Linear as the R2KD authors' release
does (same shapes and speed, a perturbed network). Both return a deep copy and leave the input as it was.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgekd.errors import EdgeKDError
from edgekd.models.shufflenet import ChannelShuffle
from edgekd.settings import PRUNE, PRUNE_METHODS


def _last_layer(model: nn.Module, example_input: torch.Tensor) -> nn.Module:
    """The Conv/Linear that runs last in a forward pass: the classifier, whose outputs must keep every class."""
    order: list[nn.Module] = []
    hooks = [
        m.register_forward_hook(lambda mod, _i, _o: order.append(mod))
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for h in hooks:
            h.remove()
    if not order:
        raise EdgeKDError(f"{type(model).__name__} has no Conv2d or Linear layer to prune")
    return order[-1]


MAX_LAYER_RATIO = 0.9  # no layer loses more of its channels, however the global ranking falls
TARGET_STEPS = 100  # iterative steps toward --target-macs: each removes about 1 % of every group's channels


def _pruner_class() -> type:
    """torch-pruning's MetaPruner, rounding a layer's kept channels to the *nearest* multiple of ``round_to``.

    MetaPruner rounds them down, so the first small step toward a MACs target already halves every 16-channel layer
    and the targets overshoot; rounded to the nearest multiple, layers shrink when their share of the target says
    so (docs/decisions.md, pruning toward a MACs target).
    """
    import torch_pruning as tp

    class NearestMultiplePruner(tp.pruner.MetaPruner):
        def _round_to(self, n_pruned: int, current_channels: int, round_to: int) -> int:
            kept = max(round_to, round_to * round((current_channels - n_pruned) / round_to))
            return max(current_channels - kept, 0)

    return NearestMultiplePruner


def _refuse_unsupported(model: nn.Module) -> None:
    """One line on why, before DepGraph fails deep inside torch-pruning (or loops) on a shuffle it cannot map."""
    reason = getattr(model, "structured_pruning_unsupported", None)
    modules = list(model.modules())
    if reason is None and not any(isinstance(m, ChannelShuffle) for m in modules) and any(
            "shuffle" in type(m).__name__.lower() for m in modules):
        reason = ("its channel shuffle is a reshape/transpose that torch-pruning's DepGraph cannot map channel "
                  "indices through (edgekd's own ShuffleV2 wraps it in a ChannelShuffle module, which it can skip)")
    if reason:
        raise EdgeKDError(f"structured pruning does not support {type(model).__name__}: {reason}; prune it with "
                          "l1-unstructured instead (`edgekd prune --prune-method l1-unstructured`, "
                          "or `--arg prune=l1-unstructured` for r2kd)")


def _shuffle_pruner() -> Any:
    """torch-pruning's handler for edgekd's ChannelShuffle: DepGraph then ends each traced reshape/transpose in a
    shuffle node (without one, grouping ShuffleV2's channels never finishes), which ``_shuffle_crossing`` finds.
    Never asked to prune: the channels through a shuffle are kept out of pruning."""
    import torch_pruning as tp

    class ShufflePruner(tp.pruner.BasePruningFunc):
        def prune_out_channels(self, layer: nn.Module, idxs: list[int]) -> nn.Module:
            raise EdgeKDError("internal error: torch-pruning tried to prune channels through a channel shuffle")

        prune_in_channels = prune_out_channels

        def get_out_channels(self, layer: nn.Module) -> None:
            return None  # a shuffle has no channel count of its own

        get_in_channels = get_out_channels

    return ShufflePruner()


def _shuffle_crossing(model: nn.Module, example_input: torch.Tensor, shuffle: dict) -> list[nn.Module]:
    """The Conv/Linear layers whose output channels reach a ChannelShuffle: pruning them would need the shuffle's
    permutation, which torch-pruning cannot apply, so they are ignored and only the channels that never cross a
    shuffle are pruned (ShuffleV2: each branch's inner width, the stem and the head conv)."""
    import torch_pruning as tp

    if not any(isinstance(m, ChannelShuffle) for m in model.modules()):
        return []
    graph = tp.DependencyGraph().build_dependency(model, example_input, customized_pruners=shuffle)
    return [m for m in graph.module2node if isinstance(m, (nn.Conv2d, nn.Linear)) and _reaches_shuffle(graph, m)]


def _reaches_shuffle(graph: Any, layer: nn.Module) -> bool:
    """Whether ``layer``'s output channels meet a ChannelShuffle through layers that pass channel indices on
    (BatchNorm, activations, depthwise convs, add, cat, slices). Cat and slice offsets are not followed, so
    this may answer yes too often (a channel kept unpruned) but never no for a channel that crosses."""
    seen: set = set()
    todo = [(graph.module2node[layer], True)]  # (node, its output side?)
    while todo:
        node, out = todo.pop()
        if (node, out) in seen:
            continue
        seen.add((node, out))
        if isinstance(node.module, ChannelShuffle):
            return True
        pruner = graph.get_pruner_of_module(node.module)
        if pruner.prune_in_channels == pruner.prune_out_channels:  # its input and output channels are one
            todo.append((node, not out))
        todo += [(n, not out) for n in (node.outputs if out else node.inputs)]
    return False


def _structured(
    model: nn.Module, ratio: float, example_input: torch.Tensor, target_macs: float | None, channel_multiple: int | None
) -> None:
    """Remove ``ratio`` of every layer group's channels, or (``target_macs``) the least important channels of the
    whole network, ranked together, in torch-pruning's small iterative steps (importance re-measured at each)
    until that fraction of the MACs is left. Ranked together, the layers whose channels matter least shrink
    most, and the steps land near the target even with channel counts rounded to multiples of 16, where a
    uniform ratio can only jump between a few shapes."""
    import torch_pruning as tp

    _refuse_unsupported(model)
    classifier = _last_layer(model, example_input)
    model.requires_grad_(True)  # DepGraph traces the autograd graph, which frozen weights would not build
    shuffle = {ChannelShuffle: _shuffle_pruner()}
    pruner = _pruner_class()(
        model,
        example_input,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=ratio if target_macs is None else 1.0,
        iterative_steps=1 if target_macs is None else TARGET_STEPS,
        global_pruning=target_macs is not None,
        max_pruning_ratio=MAX_LAYER_RATIO,
        ignored_layers=[classifier, *_shuffle_crossing(model, example_input, shuffle)],
        round_to=channel_multiple,
        customized_pruners=shuffle,
    )
    with torch.enable_grad():
        if target_macs is None:
            pruner.step()
            return
        base, _ = tp.utils.count_ops_and_params(model, example_input)
        for _ in range(TARGET_STEPS - 1):  # the last step would remove every channel
            pruner.step()
            macs, _ = tp.utils.count_ops_and_params(model, example_input)
            if macs <= target_macs * base:
                return


def _l1_unstructured(model: nn.Module, ratio: float) -> None:
    from torch.nn.utils import prune

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            prune.l1_unstructured(m, name="weight", amount=ratio)
            prune.remove(m, "weight")


def prune_model(
    model: nn.Module,
    ratio: float = PRUNE.ratio,
    method: str = "structured",
    example_input: torch.Tensor | None = None,
    *,
    target_macs: float | None = None,
    channel_multiple: int | None = None,
) -> nn.Module:
    """A pruned deep copy of ``model``; its train/eval mode and per-parameter requires_grad are kept.

    ``structured``: torch-pruning DepGraph with L1 magnitude importance removes ``ratio`` of the channels of
    every prunable layer group (or, with ``target_macs``, enough of them to leave that fraction of the MACs),
    never the classifier's outputs, keeping channel counts multiples of ``channel_multiple`` when given; needs
    ``example_input`` (one batch of the model's input shape, on its device) to trace the graph.
    ``l1-unstructured``: zero the ``ratio`` smallest |w| of every Conv2d/Linear weight (made permanent, no masks left
    behind).
    """
    if method not in PRUNE_METHODS:
        raise EdgeKDError(f"unknown pruning method {method!r}; choose one of: {', '.join(PRUNE_METHODS)}")
    if not 0.0 <= ratio < 1.0:
        raise EdgeKDError(f"pruning ratio must be in [0, 1), got {ratio}")
    if target_macs is not None and not 0.0 < target_macs < 1.0:
        raise EdgeKDError(f"target MACs must be a fraction of the model's, between 0 and 1; got {target_macs}")
    if target_macs is not None and method != "structured":
        raise EdgeKDError("a MACs target needs structured pruning: zeroed weights leave the MACs as they were")
    if channel_multiple is not None and channel_multiple < 1:
        raise EdgeKDError(f"the channel multiple must be >= 1, got {channel_multiple}")
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    training = model.training
    pruned = copy.deepcopy(model).eval()
    if method == "structured":
        if example_input is None:
            raise EdgeKDError("structured pruning traces the network and needs an example input batch")
        _structured(pruned, ratio, example_input, target_macs, channel_multiple)
    else:
        _l1_unstructured(pruned, ratio)
    for name, p in pruned.named_parameters():
        p.requires_grad_(name not in frozen)
    return pruned.train(training)


@torch.no_grad()
def accuracy(model: nn.Module, loader) -> float:
    """Top-1 accuracy of ``model`` over a loader's batches."""
    correct = total = 0
    for x, y in loader:
        correct += (model(x).argmax(1) == y).sum().item()
        total += y.numel()
    return correct / max(total, 1)


def _zero_fraction(model: nn.Module) -> float:
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    total = sum(w.numel() for w in weights)
    return sum((w == 0).sum().item() for w in weights) / max(total, 1)


def prune_into(
    run_dir: Path, out_dir: Path, ratio: float, method: str, target_macs: float | None, channel_multiple: int | None,
    batch_size: int,
) -> dict[str, Any]:
    """Prune once (no training) into run dir ``out_dir``, written atomically; the numbers also go to its summary."""
    import torch_pruning as tp

    from edgekd.data import make_loader, run_data
    from edgekd.fsutil import atomic_dir, write_json
    from edgekd.rundir import layer_shapes, load_model, save_model

    model, desc = load_model(run_dir)
    with atomic_dir(out_dir) as tmp:  # refuses an existing --out before any work
        example = torch.zeros(1, *desc["input_size"])
        pruned = prune_model(model, ratio, method, example, target_macs=target_macs,
                             channel_multiple=channel_multiple if method == "structured" else None).eval()
        loader = make_loader(run_data(desc).val_set(), batch_size, shuffle=False, seed=0)
        macs_before, params_before = tp.utils.count_ops_and_params(model, example)
        macs_after, params_after = tp.utils.count_ops_and_params(pruned, example)
        info = {"ratio": ratio} if target_macs is None else {"target_macs": target_macs}
        info["method"] = method
        if method == "structured" and channel_multiple:
            info["channel_multiple"] = channel_multiple
        info["source"] = str(run_dir)
        result = {
            "source": str(run_dir),
            "out": str(out_dir),
            **info,
            "macs_before": int(macs_before),
            "macs_after": int(macs_after),
            "params_before": int(params_before),
            "params_after": int(params_after),
            "zero_weight_fraction": _zero_fraction(pruned),
            "acc_before": accuracy(model, loader),
            "acc_after": accuracy(pruned, loader),
        }
        save_model(tmp, pruned, {**desc, "layer_shapes": layer_shapes(pruned), "pruned": info})
        # what `edgekd report` shows for a run: the pruned model's held-out accuracy and size
        write_json(tmp / "summary.json", {
            **result, "model": desc["arch"], "dataset": desc["dataset"], "best_acc": result["acc_after"],
            "final_acc": result["acc_after"], "params": result["params_after"],
        })
    return result


def prune_run(
    run_dir: str | Path,
    out_dir: str | Path,
    ratio: float = PRUNE.ratio,
    method: str = "structured",
    *,
    target_macs: float | None = None,
    channel_multiple: int | None = PRUNE.channel_multiple,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Prune a run dir's model into a new run dir that later stages (export, distill --teacher) load as is.

    Held-out accuracy is measured before and after on the run's own dataset; MACs and parameters come from
    torch-pruning's counter at batch 1; structured pruning keeps channel counts multiples of ``channel_multiple``
    (see ``edgekd.settings.PruneSettings``: other counts can make the pruned model slower than the unpruned one).
    The new dir records the pruned layer shapes; its ``summary.json`` holds
    the returned numbers (``edgekd.recover`` then wins the accuracy back).
    """
    return prune_into(Path(run_dir), Path(out_dir), ratio, method, target_macs, channel_multiple, batch_size)




def _group_graph(model: nn.Module, example_input: torch.Tensor) -> tuple[Any, dict[str, Any]]:
    """torch-pruning's dependency graph of ``model`` and its prunable layer groups by the name of each group's root
    layer: the classifier's outputs and the channels that cross a channel shuffle are left out (``_structured``)."""
    import torch_pruning as tp

    _refuse_unsupported(model)
    model.requires_grad_(True)  # DepGraph traces the autograd graph
    shuffle = {ChannelShuffle: _shuffle_pruner()}
    ignored = [_last_layer(model, example_input), *_shuffle_crossing(model, example_input, shuffle)]
    with torch.enable_grad():
        graph = tp.DependencyGraph().build_dependency(model, example_input, customized_pruners=shuffle)
    names = {m: n for n, m in model.named_modules()}
    groups = {names[g[0].dep.target.module]: g
              for g in graph.get_all_groups(ignored_layers=ignored, root_module_types=(nn.Conv2d, nn.Linear))}
    return graph, groups


def layer_groups(model: nn.Module, example_input: torch.Tensor) -> dict[str, int]:
    """The structured-prunable layer groups of ``model`` (channels pruned together, e.g. every conv a residual sum
    couples), by the name of the layer that roots each, with its channel count."""
    model = copy.deepcopy(model).eval()
    graph, groups = _group_graph(model, example_input)
    return {name: graph.get_out_channels(g[0].dep.target.module) for name, g in groups.items()}


def prune_group(model: nn.Module, example_input: torch.Tensor, group: str, keep: int) -> nn.Module:
    """A copy of ``model`` (in eval mode) whose layer group ``group`` (a name from ``layer_groups``) keeps ``keep``
    channels: those of largest L1 magnitude over the group, as ``structured`` pruning ranks them."""
    import torch_pruning as tp

    pruned = copy.deepcopy(model).eval()
    graph, groups = _group_graph(pruned, example_input)
    if group not in groups:
        raise EdgeKDError(f"{group} roots no prunable layer group; choose one of {', '.join(groups)}")
    first = groups[group][0].dep
    channels = graph.get_out_channels(first.target.module)
    if not 0 < keep <= channels:
        raise EdgeKDError(f"layer group {group} has {channels} channels; it cannot keep {keep}")
    if keep < channels:
        scores = tp.importance.MagnitudeImportance(p=1)(groups[group])
        cut = sorted(torch.argsort(scores)[: channels - keep].tolist())
        graph.get_pruning_group(first.target.module, first.handler, idxs=cut).prune()
    return pruned.requires_grad_(True)
