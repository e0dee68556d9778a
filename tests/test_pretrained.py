"""Pretrained weights: a model starts from exactly the weights in the cache (nothing is downloaded here), gets a head
for the data's classes, and carries the weights' own preprocessing from training through export to the server."""

from __future__ import annotations

import io
import json
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgekd.contracts.preprocessing import PreprocessSpec
from edgekd.errors import EdgeKDError
from edgekd.models.weights import pretrained_model

# the file torchvision's MobileNet_V3_Small_Weights.IMAGENET1K_V1 names
WEIGHTS_FILE = "mobilenet_v3_small-047dcff4.pth"
IMAGENET_SPEC = PreprocessSpec((224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), resize_policy="shorter_side",
                               shorter_side=256, interpolation="bilinear")


@pytest.fixture
def offline(monkeypatch):
    """No download can happen: torch.hub's downloader fails as it does without a network."""

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)


@pytest.fixture
def cached_weights(tmp_path, monkeypatch, offline) -> dict[str, torch.Tensor]:
    """A seeded ImageNet-shaped mobilenet_v3_small state_dict, placed where torch.hub looks under a temporary
    TORCH_HOME."""
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    torch.manual_seed(7)
    state = torchvision.models.mobilenet_v3_small().state_dict()
    path = tmp_path / "torch-home" / "hub" / "checkpoints" / WEIGHTS_FILE
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return state


def test_a_model_starts_from_the_cached_weights_with_a_new_head(cached_weights):
    import torchvision

    for choice in ("DEFAULT", "IMAGENET1K_V1", "MobileNet_V3_Small_Weights.IMAGENET1K_V1"):
        torch.manual_seed(0)
        model, spec, source = pretrained_model("tv/mobilenet_v3_small", 5, choice)
        assert source == "MobileNet_V3_Small_Weights.IMAGENET1K_V1" and spec == IMAGENET_SPEC
        state = model.state_dict()
        head = {"classifier.3.weight", "classifier.3.bias"}
        assert state["classifier.3.weight"].shape == (5, 1024)
        for name, tensor in cached_weights.items():
            if name not in head:
                assert torch.equal(state[name], tensor), name
    # the same features, so the same logits but for the head, as the model the weights were saved from
    reference = torchvision.models.mobilenet_v3_small()
    reference.load_state_dict(cached_weights)
    reference.classifier[3] = model.classifier[3]
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        torch.testing.assert_close(model.eval()(x), reference.eval()(x), rtol=0, atol=0)


def test_weights_that_are_missing_or_do_not_fit_are_one_line_errors(tmp_path, monkeypatch, offline):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    cache = tmp_path / "empty" / "hub" / "checkpoints" / WEIGHTS_FILE
    with pytest.raises(EdgeKDError, match=rf"not in the weights cache and cannot be downloaded .*put it at {cache}"):
        pretrained_model("tv/mobilenet_v3_small", 5, "DEFAULT")
    with pytest.raises(EdgeKDError, match="has no 'IMAGENET9K'; choose one of IMAGENET1K_V1"):
        pretrained_model("tv/mobilenet_v3_small", 5, "IMAGENET9K")
    with pytest.raises(EdgeKDError, match="resnet8 has no published weights; pass --weights FILE"):
        pretrained_model("resnet8", 5, "DEFAULT")
    from edgekd.models import create_model

    other = tmp_path / "resnet20.pth"
    torch.save(create_model("resnet20", 100).state_dict(), other)
    torch.manual_seed(1)
    model, spec, source = pretrained_model("resnet20", 10, str(other))  # a file: every tensor but the 100-class head
    assert spec is None and source == str(other.resolve()) and model.fc.weight.shape == (10, 64)
    assert torch.equal(model.conv1.weight, torch.load(other, weights_only=True)["conv1.weight"])
    with pytest.raises(EdgeKDError, match="do not fit resnet8x4"):
        pretrained_model("resnet8x4", 10, str(other))


def _write_photos(root: Path) -> None:
    """Two classes of non-square photos (bright and dark), in imagefolder's layout."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 3)):
        for label, level in (("bright", 200), ("dark", 40)):
            (root / split / label).mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(rng.normal(level, 30, (90, 140, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / label / f"{i}.png")


@pytest.mark.slow
def test_pretrained_run_carries_the_weights_preprocessing_to_export_and_server(cached_weights, tmp_path):
    from fastapi.testclient import TestClient

    from edgekd.config import load_config
    from edgekd.contracts.manifest import load_manifest, manifest_preprocessing
    from edgekd.contracts.rundir import description_preprocessing
    from edgekd.data import build_data
    from edgekd.export import export_run
    from edgekd.rundir import load_model
    from edgekd.serve.app import create_app
    from edgekd.serve.preprocess import Preprocessor
    from edgekd.train import run_training

    _write_photos(tmp_path / "photos")
    run = tmp_path / "run"
    cfg = load_config(overrides={"data": f"imagefolder:{tmp_path / 'photos'}", "model": "tv/mobilenet_v3_small",
                                 "pretrained": True, "epochs": 1, "batch_size": 4, "lr": 0.001, "device": "cpu",
                                 "out": str(run)})
    run_training(cfg, show_progress=False)
    desc = json.loads((run / "model.json").read_text())
    assert desc["weights"] == "MobileNet_V3_Small_Weights.IMAGENET1K_V1"
    assert description_preprocessing(desc) == IMAGENET_SPEC and desc["input_size"] == [3, 224, 224]
    assert (desc["preprocessing"]["resize_policy"] == "shorter_side"
            and desc["preprocessing"]["center_crop"] == [224, 224])

    manifest = export_run(run, tmp_path / "export", formats=("onnx",), progress=False)
    assert manifest_preprocessing(manifest) == IMAGENET_SPEC and manifest["input"]["shape"] == [None, 3, 224, 224]
    assert manifest["artifacts"]["onnx-fp32"]["agreement"] == 1.0

    # a non-square photo: the server's input is the training eval transform's, and so is its top-1
    bundle = build_data(desc["dataset"], image_size=224).with_preprocessing(IMAGENET_SPEC)
    photo = Image.fromarray(np.random.default_rng(1).integers(0, 256, (300, 170, 3), dtype=np.uint8))
    buf = io.BytesIO()
    photo.save(buf, "PNG")
    served = Preprocessor.from_manifest(load_manifest(tmp_path / "export"))(buf.getvalue())
    expected = bundle.eval_transform(photo)
    np.testing.assert_array_equal(served, expected.numpy())
    model, _ = load_model(run)
    with torch.inference_mode():
        torch_top1 = int(model(expected[None]).argmax())
    with TestClient(create_app(tmp_path / "export")) as client:
        r = client.post("/predict", files={"file": ("p.png", buf.getvalue(), "image/png")}, params={"top_k": 1})
    assert r.status_code == 200 and r.json()["predictions"][0]["index"] == torch_top1


def test_a_teacher_starts_whole_from_weights_that_know_the_data_classes(cached_weights, tmp_path):
    import torchvision

    from edgekd.config import load_config
    from edgekd.data import build_data
    from edgekd.engine.checks import load_teacher

    _write_photos(tmp_path / "photos")
    # as a --pretrained student's
    bundle = build_data(f"imagefolder:{tmp_path / 'photos'}").with_preprocessing(IMAGENET_SPEC)
    torch.manual_seed(3)
    fine_tuned = torchvision.models.mobilenet_v3_small(num_classes=2)  # a 2-class teacher, saved as a plain state_dict
    torch.save(fine_tuned.state_dict(), tmp_path / "teacher.pth")
    base = {"data": f"imagefolder:{tmp_path / 'photos'}", "method": "kd", "teacher_arch": "tv/mobilenet_v3_small",
            "out": str(tmp_path / "run")}
    teacher = load_teacher(load_config(overrides={**base, "teacher_weights": str(tmp_path / "teacher.pth")}), bundle)
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():  # every tensor, the head too, is the file's
        torch.testing.assert_close(teacher.eval()(x), fine_tuned.eval()(x), rtol=0, atol=0)
    assert teacher.edgekd_source == str((tmp_path / "teacher.pth").resolve())
    # ImageNet's 1000-class head cannot teach 2 classes: refused, not re-headed with noise
    with pytest.raises(EdgeKDError, match=r"do not fit a 2-class tv/mobilenet_v3_small whole .*fine-tune it first"):
        load_teacher(load_config(overrides={**base, "teacher_weights": "DEFAULT"}), bundle)
    # weights that expect ImageNet inputs, on a run that feeds the dataset's own
    with pytest.raises(EdgeKDError, match="expect 224x224 inputs .* but this run feeds"):
        load_teacher(load_config(overrides={**base, "teacher_weights": str(tmp_path / "teacher.pth")}),
                     build_data(f"imagefolder:{tmp_path / 'photos'}", image_size=64))
    with pytest.raises(EdgeKDError, match="pass --teacher-arch, and no --teacher"):
        load_config(overrides={**base, "teacher_arch": None, "teacher_weights": "DEFAULT"})
