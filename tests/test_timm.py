"""timm models: in the registry by name, started from weights through timm's own loading (a local file, offline), and
exported to INT8, benchmarked and served at their native size."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import torch
from PIL import Image

from edgekd.errors import EdgeKDError
from edgekd.models import create_model, list_models, model_summary
from edgekd.models.weights import pretrained_model

EDGE_STUDENTS = ("timm/mobilenetv3_small_100", "timm/efficientnet_b0", "timm/mobilenetv4_conv_small")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Hugging Face's client answers from its (empty) cache only: nothing is downloaded. huggingface_hub reads
    these settings when it is imported (timm imports it), so its constants are patched as well as the environment;
    with the environment alone the client went online and retried for most of a minute before giving up."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))


def test_timm_models_are_registered_with_their_native_size():
    names = list_models()
    assert set(EDGE_STUDENTS) | {"timm/repvit_m0_9", "timm/fastvit_t8"} <= set(names)
    assert model_summary("timm/mobilenetv3_small_100", 10)["input_size"] == (3, 224, 224)
    model = create_model("TIMM/MobileNetV3_Small_100", 7)  # names are case-insensitive, as for every model
    assert model.arch_name == "timm/mobilenetv3_small_100" and model(torch.zeros(1, 3, 224, 224)).shape == (1, 7)


def test_a_weights_file_loads_through_timm_with_a_new_head(tmp_path, offline):
    import timm

    torch.manual_seed(3)
    saved = timm.create_model("mobilenetv3_small_100").state_dict()
    path = tmp_path / "mobilenetv3_small_100.pth"
    torch.save(saved, path)
    model, spec, source = pretrained_model("timm/mobilenetv3_small_100", 5, str(path))
    assert source == str(path.resolve()) and model.arch_name == "timm/mobilenetv3_small_100"
    state = model.state_dict()
    assert state["classifier.weight"].shape == (5, 1024)
    assert all(torch.equal(state[k], v) for k, v in saved.items() if not k.startswith("classifier."))
    # timm's eval transform for this model: bicubic, shorter side floor(224 / 0.875) = 256, centre crop 224
    assert (spec.resize_policy, spec.shorter_side, spec.size, spec.interpolation) == (
        "shorter_side", 256, (224, 224), "bicubic")
    missing = rf"timm/mobilenetv3_small_100\.lamb_in1k are not in the Hugging Face cache \({re.escape(str(tmp_path))}/"
    with pytest.raises(EdgeKDError, match=missing):  # the test's own empty cache: the patch took
        pretrained_model("timm/mobilenetv3_small_100", 5, "DEFAULT")
    with pytest.raises(EdgeKDError, match="Invalid pretrained tag"):
        pretrained_model("timm/mobilenetv3_small_100", 5, "no_such_tag")


@pytest.mark.slow
@pytest.mark.parametrize("arch", EDGE_STUDENTS)
def test_timm_students_export_to_int8_bench_and_serve(arch, tmp_path):
    from fastapi.testclient import TestClient

    from edgekd.data import build_data
    from edgekd.export import export_run
    from edgekd.export.bench import run_bench
    from edgekd.rundir import model_description, save_model
    from edgekd.serve.app import create_app

    bundle = build_data("synthetic", options={"classes": 4, "size": 224, "count": 16, "val_count": 8})
    torch.manual_seed(0)
    model = create_model(arch, 4).eval()
    save_model(tmp_path / "run", model, model_description(arch, bundle))
    manifest = export_run(tmp_path / "run", tmp_path / "export", int8=True, calib_samples=8, max_drop=None,
                          progress=False)  # the architectures export; the INT8 search has tests of its own
    assert set(manifest["artifacts"]) == {"onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-int8"}
    assert manifest["input"]["shape"] == [None, 3, 224, 224]
    for key in ("onnx-fp32", "openvino-fp32"):
        assert manifest["artifacts"][key]["agreement"] == 1.0, key

    rows = run_bench(tmp_path / "export", runtimes=("ort", "openvino"), warmup=1, iters=3, progress=False)
    assert [(r["runtime"], r["precision"], r["status"]) for r in rows] == [
        ("ort", "fp32", "ok"), ("ort", "int8", "ok"), ("openvino", "fp32", "ok"), ("openvino", "int8", "ok")]

    photo = Image.fromarray(np.random.default_rng(2).integers(0, 256, (260, 180, 3), dtype=np.uint8))
    buf = io.BytesIO()
    photo.save(buf, "PNG")
    with torch.inference_mode():
        expected = int(model(bundle.eval_transform(photo)[None]).argmax())
    with TestClient(create_app(tmp_path / "export", precision="fp32")) as client:
        r = client.post("/predict", files={"file": ("p.png", buf.getvalue(), "image/png")}, params={"top_k": 1})
    assert r.status_code == 200 and r.json()["predictions"][0]["index"] == expected


@pytest.mark.slow
def test_a_timm_student_distils_from_a_run_dir_teacher(tmp_path):
    from edgekd.config import load_config
    from edgekd.data import build_data
    from edgekd.export import export_run
    from edgekd.rundir import load_model, model_description, save_model
    from edgekd.train import run_training

    options = {"classes": 4, "size": 224, "count": 16, "val_count": 8}
    bundle = build_data("synthetic", options=options)
    torch.manual_seed(0)
    save_model(tmp_path / "teacher", create_model("timm/mobilenetv3_small_100", 4).eval(),
               model_description("timm/mobilenetv3_small_100", bundle))
    cfg = load_config(overrides={"data": "synthetic", "data_options": options, "model": "timm/mobilenetv4_conv_small",
                                 "method": "kd", "teacher": str(tmp_path / "teacher"), "epochs": 1, "batch_size": 4,
                                 "lr": 0.01, "device": "cpu", "out": str(tmp_path / "student")})
    summary = run_training(cfg, show_progress=False)
    assert summary["method"] == "kd" and summary["model"] == "timm/mobilenetv4_conv_small"
    student, desc = load_model(tmp_path / "student")
    assert desc["arch"] == "timm/mobilenetv4_conv_small" and desc["teacher"] == str(tmp_path / "teacher")
    manifest = export_run(tmp_path / "student", tmp_path / "export", formats=("onnx",), int8=True, calib_samples=8,
                          max_drop=None, progress=False)
    assert (set(manifest["artifacts"]) == {"onnx-fp32", "onnx-int8"}
            and manifest["artifacts"]["onnx-fp32"]["agreement"] == 1.0)
