"""prune_model (structured DepGraph and L1 unstructured) and prune_run on a real run dir."""

import json

import pytest
import torch
import torch_pruning as tp
from torch import nn

from edgekd.errors import EdgeKDError
from edgekd.models import create_model
from edgekd.prune import prune_model, prune_run
from edgekd.recover import prune_and_recover
from edgekd.rundir import layer_shapes, load_model, save_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 7),
    )


def snapshot(m: nn.Module) -> dict:
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_structured_prune_is_smaller_and_leaves_input_untouched():
    model = tiny_cnn().train()
    model[0].weight.requires_grad_(False)
    before = snapshot(model)
    x = torch.randn(2, 3, 12, 12)
    pruned = prune_model(model, 0.25, "structured", x[:1])

    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in before.items()}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert model.training and not model[0].weight.requires_grad and model[3].weight.requires_grad
    assert pruned.training  # the copy keeps the input's mode and requires_grad flags
    assert not pruned[0].weight.requires_grad and pruned[3].weight.requires_grad

    assert (pruned[0].out_channels, pruned[3].out_channels) == (12, 24)
    assert pruned[-1].out_features == 7  # the classifier keeps every class
    macs, params = tp.utils.count_ops_and_params(model, x[:1])
    macs_p, params_p = tp.utils.count_ops_and_params(pruned, x[:1])
    assert macs_p < macs and params_p < params
    assert pruned.eval()(x).shape == (2, 7)


def test_l1_unstructured_zeroes_ten_percent_of_every_layer():
    model = tiny_cnn()
    pruned = prune_model(model, 0.1, "l1-unstructured")
    for m, orig in zip(pruned.modules(), model.modules()):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            zeros = m.weight == 0
            assert zeros.sum().item() == round(0.1 * m.weight.numel())
            # the zeroed weights are the smallest in magnitude of their layer
            assert orig.weight[zeros].abs().max() <= orig.weight[~zeros].abs().min()
            assert not hasattr(m, "weight_mask") and not hasattr(m, "weight_orig")
            assert (orig.weight != 0).all()


def test_bad_arguments_are_user_errors():
    with pytest.raises(EdgeKDError, match="unknown pruning method"):
        prune_model(tiny_cnn(), 0.1, "random")
    with pytest.raises(EdgeKDError, match=r"\[0, 1\)"):
        prune_model(tiny_cnn(), 1.5, "structured", torch.randn(1, 3, 8, 8))
    with pytest.raises(EdgeKDError, match="example input"):
        prune_model(tiny_cnn(), 0.1, "structured")


@pytest.mark.parametrize("arch", ["resnet8x4", "vgg8", "wrn_16_2"])
def test_structured_prune_of_cifar_models(arch):
    model = create_model(arch, 100).eval()
    x = torch.randn(2, 3, 32, 32)
    pruned = prune_model(model, 0.2, "structured", x[:1])
    macs, params = tp.utils.count_ops_and_params(model, x[:1])
    macs_p, params_p = tp.utils.count_ops_and_params(pruned, x[:1])
    assert macs_p < 0.9 * macs and params_p < 0.9 * params
    with torch.no_grad():
        assert pruned(x).shape == (2, 100)


def description(arch: str, num_classes: int, size: int, dataset: str, options: dict) -> dict:
    return {
        "arch": arch, "num_classes": num_classes, "input_size": [3, size, size], "mean": [0.5] * 3,
        "std": [0.25] * 3, "class_names": [f"class{i}" for i in range(num_classes)], "dataset": dataset,
        "dataset_options": options,
    }


def test_pruned_model_round_trips_through_a_run_dir(tmp_path):
    model = create_model("resnet8", 10).eval()
    x = torch.randn(3, 3, 32, 32)
    pruned = prune_model(model, 0.3, "structured", x[:1])
    desc = description("resnet8", 10, 32, "synthetic", {})
    save_model(tmp_path, pruned, {**desc, "layer_shapes": layer_shapes(pruned)})
    loaded, _ = load_model(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"arch": 5}, "arch must be a model name"),
        ({"num_classes": "10"}, "num_classes must be a positive integer"),
        ({"input_size": [3, -1, 32]}, r"input_size must be \[3, height, width\]"),
        ({"input_size": [1, 32, 32]}, r"input_size must be \[3, height, width\]"),
        ({"std": [0, 0, 0]}, "std > 0"),
        ({"mean": [0.1]}, "mean and std must be 3 finite numbers"),
        ({"class_names": None}, "class_names must be 10 strings"),
        ({"dataset_options": [1]}, "dataset_options an object"),
        ({"layer_shapes": "x"}, "layer_shapes must be an object"),
        ({"layer_shapes": {"conv1": {"in": 3, "out": 10**9, "groups": 1}}},
         r"layer_shapes\['conv1'\] .* does not match"),
        ({"layer_shapes": {"conv1": {"in": 3, "groups": 1}}},
         r"layer_shapes\['conv1'\] needs positive integers in, out, groups"),
        ({"layer_shapes": {"conv1": {"in": 3, "out": 16, "groups": 0}}}, "needs positive integers"),
    ],
)
def test_a_corrupt_model_json_is_refused_before_a_model_is_built(tmp_path, change, message):
    model = create_model("resnet8", 10).eval()
    pruned = prune_model(model, 0.3, "structured", torch.zeros(1, 3, 32, 32))
    save_model(tmp_path, pruned,
               {**description("resnet8", 10, 32, "synthetic", {}), "layer_shapes": layer_shapes(pruned)})
    desc = json.loads((tmp_path / "model.json").read_text())
    (tmp_path / "model.json").write_text(json.dumps({**desc, **change}))
    with pytest.raises(EdgeKDError, match=message):
        load_model(tmp_path)


def test_prune_run_writes_a_loadable_smaller_run(tmp_path):
    options = {"classes": 4, "size": 16, "count": 40, "val_count": 40, "seed": 0}
    model = create_model("resnet8", 4).eval()
    save_model(tmp_path / "run", model, description("resnet8", 4, 16, "synthetic", options))
    result = prune_run(tmp_path / "run", tmp_path / "pruned", 0.3, "structured")

    assert result["macs_after"] < result["macs_before"] and result["params_after"] < result["params_before"]
    loaded, desc = load_model(tmp_path / "pruned")
    # the accuracies are the held-out split's, for the unpruned model and for the saved pruned one
    assert result["acc_before"] == heldout_accuracy(model, desc)
    assert result["acc_after"] == heldout_accuracy(loaded, desc)
    assert desc["pruned"] == {
        "ratio": 0.3, "method": "structured", "channel_multiple": 16, "source": str(tmp_path / "run"),
    }
    assert all(m.out_channels % 16 == 0 for m in loaded.modules() if isinstance(m, nn.Conv2d))
    assert sum(p.numel() for p in loaded.parameters()) == result["params_after"]
    assert json.loads((tmp_path / "run" / "model.json").read_text())["arch"] == "resnet8"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    # `edgekd report` finds the pruned dir with its own accuracy and size (it showed dashes)
    from edgekd.report import discover

    [run] = [r for r in discover(tmp_path).runs if r.pruned]
    assert (run.summary["best_acc"], run.summary["final_acc"], run.summary["params"]) == (
        result["acc_after"], result["acc_after"], result["params_after"])
    with pytest.raises(EdgeKDError, match="already exists"):
        prune_run(tmp_path / "run", tmp_path / "pruned", 0.3, "structured")


def test_target_macs_prunes_in_steps_until_the_fraction_is_reached():
    model = create_model("resnet8", 10).eval()
    x = torch.zeros(1, 3, 32, 32)
    base, _ = tp.utils.count_ops_and_params(model, x)
    for target in (0.7, 0.5):
        macs, _ = tp.utils.count_ops_and_params(prune_model(model, 0.0, "structured", x, target_macs=target), x)
        # stops at the first step under the target: about 1 % of every group's channels per step
        assert target - 0.05 < macs / base <= target
    rounded = prune_model(model, 0.0, "structured", x, target_macs=0.5, channel_multiple=8)
    assert {m.out_channels for m in rounded.modules() if isinstance(m, nn.Conv2d)} <= {8, 16, 24, 32, 40, 48, 56, 64}
    assert tp.utils.count_ops_and_params(rounded, x)[0] <= 0.5 * base
    with pytest.raises(EdgeKDError, match="needs structured pruning"):
        prune_model(model, 0.0, "l1-unstructured", target_macs=0.5)
    with pytest.raises(EdgeKDError, match="between 0 and 1"):
        prune_model(model, 0.0, "structured", x, target_macs=1.5)


SYNTHETIC = {"classes": 4, "size": 16, "count": 64, "val_count": 40, "seed": 0}


def heldout_accuracy(model, desc):
    """Top-1 of ``model`` on its run's held-out split, counted here image by image (to within one image: a batch
    of another size may round a near tie the other way)."""
    from edgekd.data import run_data

    val = run_data(desc).val_set()
    with torch.no_grad():
        right = sum(int(model.eval()(x[None]).argmax(1).item() == y) for x, y in (val[i] for i in range(len(val))))
    return pytest.approx(right / len(val), abs=1.01 / len(val))


def synthetic_run(run_dir, arch: str = "resnet8"):
    from edgekd.data import build_data
    from edgekd.rundir import model_description

    torch.manual_seed(0)
    bundle = build_data("synthetic", options=SYNTHETIC)
    model = create_model(arch, bundle.num_classes).eval()
    save_model(run_dir, model, model_description(arch, bundle))
    return model


def test_init_restores_a_pruned_architecture_exactly(tmp_path):
    from edgekd.config import load_config
    from edgekd.distributed import DistInfo
    from edgekd.engine import build_parts

    model = synthetic_run(tmp_path / "run")
    prune_run(tmp_path / "run", tmp_path / "pruned", 0.4, "structured")
    pruned, _ = load_model(tmp_path / "pruned")
    cfg = load_config(None, {"data": "synthetic", "data_options": SYNTHETIC, "init": str(tmp_path / "pruned"),
                             "epochs": 1, "out": str(tmp_path / "next"), "device": "cpu"})
    assert cfg.model == "resnet8"  # the init run's architecture, not the default resnet20
    with pytest.raises(EdgeKDError, match="holds a resnet8, not a resnet20; drop --model/--student"):
        load_config(None, {"init": str(tmp_path / "pruned"), "model": "resnet20"})
    student = build_parts(cfg, torch.device("cpu"), DistInfo()).method.student.eval()
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(student(x), pruned(x))
        assert not torch.equal(student(x), model(x))
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in model.parameters())


def test_prune_with_recovery_writes_a_run_dir_with_the_three_accuracies(tmp_path, digits_run_dir):
    recover = {"epochs": 2, "method": "kd", "batch_size": 32, "device": "cpu"}
    result = prune_and_recover(digits_run_dir, tmp_path / "rec", recover, target_macs=0.5, channel_multiple=8,
                               show_progress=False)

    summary = json.loads((tmp_path / "rec" / "summary.json").read_text())
    for key in ("acc_before", "acc_pruned", "acc_recovered"):
        assert summary[key] == result[key]
    assert summary["acc_recovered"] == summary["final_acc"] and summary["method"] == "kd"
    assert summary["pruning"] == {"target_macs": 0.5, "method": "structured", "channel_multiple": 8,
                                  "source": str(digits_run_dir)}
    assert summary["macs_after"] <= 0.5 * summary["macs_before"]
    recovered, desc = load_model(tmp_path / "rec")
    pruned, pruned_desc = load_model(tmp_path / "rec" / "pruned")
    assert desc["init"] == str(tmp_path / "rec" / "pruned") and desc["teacher"] == str(digits_run_dir)
    assert layer_shapes(recovered) == layer_shapes(pruned) == pruned_desc["layer_shapes"]
    assert sum(p.numel() for p in recovered.parameters()) == summary["params_after"]
    # the numbers are the held-out split's, and KD from the unpruned model wins accuracy back
    assert summary["acc_pruned"] == heldout_accuracy(pruned, desc)
    assert summary["acc_recovered"] == heldout_accuracy(recovered, desc)
    assert summary["acc_recovered"] >= summary["acc_pruned"] + 0.3, summary  # at chance after the cut, here


def test_prune_says_when_the_channel_multiple_stops_it_short_of_the_target(tmp_path, monkeypatch, capsys):
    from conftest import run_cli

    synthetic_run(tmp_path / "run")  # resnet8: 16/32/64 channels
    code, out, _ = run_cli(monkeypatch, capsys, "prune", str(tmp_path / "run"), "-o", str(tmp_path / "p16"),
                           "--target-macs", "0.5")
    left = json.loads((tmp_path / "p16" / "summary.json").read_text())
    assert code == 0 and left["channel_multiple"] == 16 and left["macs_after"] > 0.5 * left["macs_before"]
    assert f"{left['macs_after'] / left['macs_before']:.2f} of the MACs left, not 0.5" in " ".join(out.split())
    code, out, _ = run_cli(monkeypatch, capsys, "prune", str(tmp_path / "run"), "-o", str(tmp_path / "p8"),
                           "--target-macs", "0.5", "--channel-multiple", "8")
    left = json.loads((tmp_path / "p8" / "summary.json").read_text())
    assert code == 0 and left["macs_after"] <= 0.5 * left["macs_before"] and "MACs left" not in out


def test_a_failed_recovery_leaves_no_run_behind(tmp_path):
    synthetic_run(tmp_path / "run")
    with pytest.raises(EdgeKDError, match="batch_size 4096"):
        prune_and_recover(tmp_path / "run", tmp_path / "out" / "rec",
                          {"epochs": 1, "batch_size": 4096, "device": "cpu"}, 0.3)
    assert not (tmp_path / "out").exists()
    with pytest.raises(EdgeKDError, match="unknown method"):  # checked before any pruning
        prune_and_recover(tmp_path / "run", tmp_path / "rec", {"epochs": 1, "method": "nope"}, 0.3)
    assert not (tmp_path / "rec").exists()


SHUFFLE_TIMEOUT = 300  # DepGraph looped forever on ShuffleV2's shuffle; a regression fails instead of hanging


def shufflev2_trunk(model: nn.Module) -> dict[str, int]:
    """Output widths of the layers whose channels cross a channel shuffle: pruning must leave them whole."""
    from edgekd.models.shufflenet import ShuffleV2Down, ShuffleV2Unit

    widths = {n: (m.conv2.out_channels, m.conv5.out_channels) for n, m in model.named_modules()
              if isinstance(m, ShuffleV2Down)}
    return {**widths, **{n: m.conv3.out_channels for n, m in model.named_modules() if isinstance(m, ShuffleV2Unit)}}


@pytest.mark.timeout(SHUFFLE_TIMEOUT)
def test_shufflev2_prunes_the_channels_that_never_cross_a_shuffle(tmp_path):
    torch.manual_seed(0)
    model = create_model("ShuffleV2", 10).eval()
    x = torch.randn(2, 3, 32, 32)
    pruned = prune_model(model, 0.3, "structured", x[:1], channel_multiple=8)
    macs, params = tp.utils.count_ops_and_params(model, x[:1])
    macs_p, params_p = tp.utils.count_ops_and_params(pruned, x[:1])
    assert macs_p < 0.75 * macs and params_p < 0.75 * params
    assert shufflev2_trunk(pruned) == shufflev2_trunk(model)
    inner = [pruned.get_submodule(f"{stage}.{i}.conv1") for stage in ("layer1", "layer2", "layer3") for i in (1, 2)]
    assert all(c.out_channels % 8 == 0 and c.out_channels < c.in_channels for c in inner)  # 58 -> 40, 116 -> 80, ...
    assert pruned.conv1.out_channels == 16 and pruned.conv2.out_channels == 720  # the stem and the head conv
    # every layer whose weights changed shape is one that layer_shapes records
    resized = {k.rsplit(".", 1)[0] for k, v in pruned.state_dict().items() if v.shape != model.state_dict()[k].shape}
    assert resized and resized <= set(layer_shapes(pruned))
    desc = description("ShuffleV2", 10, 32, "synthetic", {})
    save_model(tmp_path, pruned, {**desc, "layer_shapes": layer_shapes(pruned)})
    loaded, _ = load_model(tmp_path)
    with torch.no_grad():
        assert pruned(x).shape == (2, 10)
        assert torch.equal(loaded(x), pruned(x))


@pytest.mark.timeout(SHUFFLE_TIMEOUT)
def test_a_shufflev2_pruned_to_half_its_macs_recovers_and_exports_from_its_run_dir(tmp_path):
    from edgekd.export import export_run

    model = synthetic_run(tmp_path / "run", "ShuffleV2")
    recover = {"epochs": 1, "batch_size": 16, "device": "cpu"}
    result = prune_and_recover(tmp_path / "run", tmp_path / "rec", recover, target_macs=0.5, show_progress=False)
    assert 0.45 < result["macs_after"] / result["macs_before"] <= 0.5
    assert result["params_after"] < result["params_before"]
    recovered, desc = load_model(tmp_path / "rec")
    assert shufflev2_trunk(recovered) == shufflev2_trunk(model) and desc["layer_shapes"] == layer_shapes(recovered)
    assert sum(p.numel() for p in recovered.parameters()) == result["params_after"]
    manifest = export_run(tmp_path / "rec", tmp_path / "export", formats=("onnx",), progress=False)
    assert manifest["artifacts"]["onnx-fp32"]["agreement"] == 1.0


def test_structured_pruning_refuses_the_shuffle_networks_it_cannot_prune_in_one_line():
    x = torch.zeros(1, 3, 32, 32)
    with pytest.raises(EdgeKDError, match=r"ShuffleNetV1: torch-pruning removes the same channel index") as e:
        prune_model(create_model("ShuffleV1", 10), 0.1, "structured", x)
    assert "\n" not in str(e.value)
    with pytest.raises(EdgeKDError, match=r"ShuffleNetV2: its channel shuffle is a reshape/transpose .* l1-unstr"):
        prune_model(create_model("tv/shufflenet_v2_x0_5", 10), 0.1, "structured", x)


def test_prune_names_its_recovery_method_recover_method_and_keeps_method_as_a_deprecated_alias(
        tmp_path, monkeypatch, capsys):
    from conftest import run_cli

    synthetic_run(tmp_path / "run")
    for flag, note in (("--recover-method", False), ("--method", True)):
        out = tmp_path / flag.strip("-")
        code, _, err = run_cli(monkeypatch, capsys, "prune", str(tmp_path / "run"), "-o", str(out), "--ratio", "0.3",
                               "--recover-epochs", "1", flag, "ce", "--batch-size", "16", "--device", "cpu")
        assert code == 0, err
        assert json.loads((out / "summary.json").read_text())["method"] == "ce"
        assert ("--method is now --recover-method" in err) == note, err
