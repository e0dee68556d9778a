"""Model registry: CIFAR family compatible with RepDistiller/mdistiller checkpoints, torchvision by name."""

from __future__ import annotations

import functools
import math
import pickle
import random
import warnings

import pytest
import torch
import torchvision

from edgekd.errors import EdgeKDError
from edgekd.models import (
    count_params,
    create_model,
    list_models,
    load_checkpoint_file,
    model_summary,
    register_model,
)
from edgekd.models.freeze import freeze_for_inference

CIFAR = [  # the family edgekd ships; a model registered later needs no edit here (OWN has it)
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4", "resnet32x4",
    "ResNet50", "MobileNetV2", "ShuffleV1", "ShuffleV2", "vgg8", "vgg11", "vgg13", "vgg16", "vgg19",
    "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2",
]  # fmt: skip
OWN = [name for name in list_models() if "/" not in name]  # every registered model but torchvision's and timm's


def _randomize_bn(model: torch.nn.Module) -> torch.nn.Module:
    """Give every BN non-default statistics, so logits depend on every tensor in the state_dict."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=gen) * 0.4 - 0.2)
    return model.eval()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@functools.cache
def _shapes(name: str) -> dict[str, tuple[int, ...]]:
    """state_dict shapes at 100 classes, built on the meta device: no memory, no init, instant."""
    with torch.device("meta"):
        model = create_model(name, 100)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def x32() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_list_models_has_cifar_family_first_then_every_timm_then_every_torchvision_classifier():
    import timm

    names = list_models()
    assert set(CIFAR) <= set(OWN) == set(names[: len(OWN)])
    tv = {"tv/" + n for n in torchvision.models.list_models(module=torchvision.models)}
    timms = {"timm/" + n for n in timm.list_models()}
    assert set(names[len(OWN) : len(OWN) + len(timms)]) == timms
    assert set(names[len(OWN) + len(timms) :]) == tv
    assert "tv/resnet18" in tv and "tv/mobilenet_v3_small" in tv


@pytest.mark.parametrize("name", OWN)
def test_cifar_model_forward(name: str, x32: torch.Tensor):
    model = create_model(name, num_classes=10).eval()
    assert model.arch_name == name
    with torch.no_grad():
        assert model(x32).shape == (2, 10)


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "vgg8", "MobileNetV2", "ShuffleV2"])
def test_one_model_per_family_also_takes_64x64_inputs(name: str):
    """The originals pool with fixed 8x8/4x4/2x2 windows; ours are adaptive, so Tiny-ImageNet sizes work."""
    with torch.no_grad():
        assert create_model(name, num_classes=10).eval()(torch.randn(1, 3, 64, 64)).shape == (1, 10)


@pytest.mark.parametrize(("name", "side"), [("tv/resnet18", 64), ("tv/mobilenet_v3_small", 64), ("tv/googlenet", 32)])
def test_torchvision_models_build_without_weights_and_return_logits(name: str, side: int):
    model = create_model(name, num_classes=10)
    out = model(torch.randn(2, 3, side, side))  # training mode: googlenet would return aux outputs if they were on
    assert isinstance(out, torch.Tensor) and out.shape == (2, 10)


# Parameter counts at 100 classes as the CIFAR-100 tables of RepDistiller-based KD papers report them
# (millions, two decimals).
PUBLISHED_PARAMS_M = {
    "resnet8x4": 1.23, "resnet32x4": 7.43, "resnet56": 0.86, "resnet110": 1.73, "wrn_40_2": 2.26, "wrn_16_2": 0.70,
    "vgg13": 9.46, "vgg8": 3.97, "MobileNetV2": 0.81, "ShuffleV1": 0.95, "ShuffleV2": 1.36,
}  # fmt: skip


@pytest.mark.parametrize(("name", "millions"), PUBLISHED_PARAMS_M.items())
def test_param_counts_match_published(name: str, millions: float):
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    params = sum(math.prod(shape) for key, shape in _shapes(name).items() if not key.endswith(buffers))
    with torch.device("meta"):
        assert count_params(create_model(name, 100)) == params
    assert params / 1e6 == pytest.approx(millions, rel=0.01, abs=0.005)


@pytest.mark.parametrize(
    ("name", "key", "shape"),
    [
        ("resnet8x4", "layer1.0.downsample.0.weight", (64, 32, 1, 1)),
        ("resnet8x4", "fc.weight", (100, 256)),
        ("resnet56", "layer3.8.bn2.num_batches_tracked", ()),
        ("ResNet50", "layer1.0.shortcut.0.weight", (256, 64, 1, 1)),
        ("ResNet50", "linear.weight", (100, 2048)),
        ("wrn_40_2", "block1.layer.0.convShortcut.weight", (32, 16, 1, 1)),
        ("wrn_40_2", "block3.layer.5.bn2.running_var", (128,)),
        ("wrn_40_2", "bn1.weight", (128,)),
        ("vgg13", "block0.0.bias", (64,)),
        ("vgg13", "block0.4.running_mean", (64,)),
        ("vgg13", "classifier.weight", (100, 512)),
        ("MobileNetV2", "conv1.0.weight", (16, 3, 3, 3)),
        ("MobileNetV2", "blocks.0.0.conv.0.weight", (16, 16, 1, 1)),
        ("MobileNetV2", "blocks.6.0.conv.7.weight", (160,)),
        ("MobileNetV2", "classifier.0.weight", (100, 1280)),
        ("ShuffleV1", "layer1.0.conv1.weight", (54, 24, 1, 1)),
        ("ShuffleV1", "layer2.1.conv3.weight", (480, 40, 1, 1)),
        ("ShuffleV1", "linear.weight", (100, 960)),
        ("ShuffleV2", "layer1.0.conv5.weight", (58, 58, 1, 1)),
        ("ShuffleV2", "layer3.3.bn3.running_mean", (232,)),
        ("ShuffleV2", "conv2.weight", (1024, 464, 1, 1)),
    ],
)
def test_state_dict_keys_follow_repdistiller(name: str, key: str, shape: tuple[int, ...]):
    assert _shapes(name)[key] == shape


def test_no_extra_or_renamed_keys_in_resnet8():
    keys = list(_shapes("resnet8"))
    # stem conv + BN (5 entries each), 3 blocks of 2 x (conv + BN), 2 downsamples (conv + BN), fc weight + bias
    assert len(keys) == 6 + 3 * 12 + 2 * 6 + 2
    assert keys[:7] == [
        "conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked",
        "layer1.0.conv1.weight",
    ]  # fmt: skip


def test_lookup_is_case_insensitive_and_unknown_names_suggest_close_ones():
    assert create_model("RESNET8X4", 10).arch_name == "resnet8x4"
    assert create_model("mobilenetv2", 10).arch_name == "MobileNetV2"
    with pytest.raises(EdgeKDError, match="resnet8x4"):
        create_model("resnet8x5", 10)
    with pytest.raises(EdgeKDError, match="unknown model"):
        create_model("no_such_net", 10)
    with pytest.raises(EdgeKDError, match="num_classes"):
        create_model("resnet8", 0)
    with pytest.raises(ValueError, match="registered twice"):
        register_model("RESNET8")(lambda num_classes: torch.nn.Identity())


def test_model_summary_counts_macs_and_params():
    small, large = model_summary("resnet8x4", 100), model_summary("resnet32x4", 100)
    assert small["name"] == "resnet8x4" and small["input_size"] == (3, 32, 32)
    assert small["params"] == count_params(create_model("resnet8x4", 100))
    assert 0 < small["macs"] < large["macs"]
    assert model_summary("resnet8", 10, input_size=(3, 64, 64))["macs"] > 3.9 * model_summary("resnet8", 10)["macs"]


def test_model_summary_of_torchvision_model_matches_torchvision_published_ops():
    summary = model_summary("tv/resnet18", 1000)
    assert summary["input_size"] == (3, 224, 224)
    published = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta
    assert summary["params"] == published["num_params"]
    assert summary["macs"] / 1e9 == pytest.approx(published["_ops"], rel=0.01)


def test_model_summary_too_small_input_is_a_user_error():
    with pytest.raises(EdgeKDError, match="input size"):
        model_summary("vgg8", 10, input_size=(3, 4, 4))


@pytest.fixture(scope="module")
def trained_resnet8() -> torch.nn.Module:
    return _randomize_bn(create_model("resnet8", 10))


@pytest.mark.parametrize("layout", ["repdistiller", "state_dict", "bare", "dataparallel", "edgekd"])
def test_checkpoint_round_trip_gives_identical_logits(layout, trained_resnet8, x32, tmp_path):
    state = trained_resnet8.state_dict()
    payload = {
        "repdistiller": {"model": state, "epoch": 240, "accuracy": torch.tensor(71.2)},
        "state_dict": {"state_dict": state, "epoch": 3},
        "bare": state,
        "dataparallel": {"model": {"module." + k: v for k, v in state.items()}, "epoch": 240},
        "edgekd": {  # a run's own checkpoint.pt, as the trainer writes it
            "epoch": 2, "student": state,
            "optimizer": torch.optim.SGD(trained_resnet8.parameters(), lr=0.1).state_dict(),
            "scaler": {}, "best_acc": 0.5, "history": [{"epoch": 1, "val_acc": 0.5}],
        },
    }[layout]
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save(payload, path)
    fresh = create_model("resnet8", 10).eval()
    with torch.no_grad():
        expected = trained_resnet8(x32)
        assert not torch.allclose(fresh(x32), expected)
        load_checkpoint_file(fresh, path)
        assert torch.equal(fresh(x32), expected)


def test_corrupt_missing_and_foreign_checkpoints_are_user_errors(tmp_path):
    model = create_model("resnet8x4", 10)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(random.Random(0).randbytes(4096))
    with pytest.raises(EdgeKDError, match="cannot read checkpoint"):
        load_checkpoint_file(model, garbage)
    with pytest.raises(EdgeKDError, match="not found"):
        load_checkpoint_file(model, tmp_path / "missing.pth")
    code = tmp_path / "code.pth"  # a pickle that would call os.system on an unsafe load
    code.write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")
    with pytest.raises(EdgeKDError) as err:
        load_checkpoint_file(model, code)
    # no advice to turn safety off
    assert "holds more than tensors" in str(err.value) and "weights_only" not in str(err.value)
    for obj in ({"a": 1}, {"w": [1.0]}):  # raw pickles, not torch.save files: refused without torch's warning first
        raw = tmp_path / "raw.pth"
        raw.write_bytes(pickle.dumps(obj, protocol=4))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(EdgeKDError, match="holds more than tensors"):
                load_checkpoint_file(model, raw)
    no_tensors = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "note": "no weights"}, no_tensors)
    with pytest.raises(EdgeKDError, match="no state_dict"):
        load_checkpoint_file(model, no_tensors)


def test_wrong_architecture_is_rejected_without_touching_the_model(tmp_path):
    path = tmp_path / "resnet8.pth"
    torch.save({"model": create_model("resnet8", 10).state_dict()}, path)
    model = create_model("resnet8x4", 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(EdgeKDError) as err:
        load_checkpoint_file(model, path)
    message = str(err.value)
    assert "does not match resnet8x4" in message and "shape mismatches" in message
    assert "missing keys (layer1.0.downsample.0.weight" in message
    assert "\n" not in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())



@pytest.mark.parametrize(("name", "side", "bn_left"),
                         [("resnet8x4", 32, 0), ("vgg8", 32, 0), ("vgg8", 64, 0), ("wrn_16_1", 32, 7)])
def test_freeze_for_inference_folds_conv_bn_and_keeps_the_logits(name: str, side: int, bn_left: int):
    model = _randomize_bn(create_model(name, 10)).train()
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))
    frozen = freeze_for_inference(model)
    assert model.training and all(p.requires_grad for p in model.parameters())  # the original is untouched
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    # wrn is pre-activation (BN before conv): only the BNs that follow a conv can fold
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in frozen.modules()) == bn_left
    with torch.no_grad():
        assert torch.allclose(frozen(x), model.eval()(x), rtol=1e-4, atol=1e-4)


class _DataDependent(torch.nn.Module):
    """Control flow on tensor values: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        return y if y.sum() > 0 else -y


def test_freeze_for_inference_keeps_untraceable_models_unfolded_but_frozen():
    model = _randomize_bn(_DataDependent())
    frozen = freeze_for_inference(model)
    assert isinstance(frozen.bn, torch.nn.BatchNorm2d) and not frozen.training
    assert not any(p.requires_grad for p in frozen.parameters())
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(frozen(x), model.eval()(x))
