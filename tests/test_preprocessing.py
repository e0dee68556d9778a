"""One preprocessing spec: the training eval transform (torchvision) and the server's path (PIL + numpy) built from
the same spec give the same input tensor, and the spec survives model.json and the manifest."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from edgekd.contracts.preprocessing import PreprocessSpec
from edgekd.contracts.rundir import description_preprocessing
from edgekd.errors import EdgeKDError
from edgekd.serve.preprocess import Preprocessor

SPECS = {
    "exact bilinear": PreprocessSpec((32, 32), (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)),
    "exact non-square bicubic BGR": PreprocessSpec((24, 40), (0.4, 0.4, 0.4), (0.25, 0.25, 0.25),
                                                   interpolation="bicubic", channel_order="BGR"),
    "shorter side + crop bilinear": PreprocessSpec((28, 28), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                                                   resize_policy="shorter_side", shorter_side=32),
    "shorter side + non-square crop bicubic": PreprocessSpec((20, 30), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5),
                                                             resize_policy="shorter_side", shorter_side=37,
                                                             interpolation="bicubic", scale=1 / 127.5),
}
SIZES = [(8, 8), (32, 32), (45, 19), (19, 45), (300, 200), (201, 333)]  # (height, width)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("name", SPECS)
def test_training_eval_transform_and_server_agree(name: str) -> None:
    from edgekd.data import make_eval_transform

    spec = SPECS[name]
    training = make_eval_transform(spec)
    server = Preprocessor(spec)
    rng = np.random.default_rng(0)
    for h, w in SIZES:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        ours = server(_png(img))
        theirs = training(img).numpy()
        assert ours.shape == theirs.shape == (3, *spec.size), (name, h, w)
        # within a pixel's rounding: one 8-bit level through scale and std (the same float32 steps give equality)
        level = spec.scale / min(spec.std)
        assert np.abs(ours - theirs).max() <= level * 1.001, (name, h, w)
        assert np.mean(ours == theirs) > 0.99, (name, h, w)


def test_shorter_side_geometry_follows_torchvision() -> None:
    spec = SPECS["shorter side + crop bilinear"]
    assert spec.resized_size(45, 19) == (75, 32) and spec.resized_size(19, 45) == (32, 75)
    assert spec.crop_box(75, 32) == (24, 2, 52, 30)
    assert SPECS["exact bilinear"].resized_size(45, 19) == (32, 32) and SPECS["exact bilinear"].crop_box(32, 32) is None


@pytest.mark.parametrize("spec", SPECS.values(), ids=list(SPECS))
def test_spec_round_trips_through_its_stored_form(spec: PreprocessSpec) -> None:
    stored = json.loads(json.dumps(spec.to_dict()))
    assert PreprocessSpec.from_dict(stored) == spec


def test_stored_forms_of_older_files_and_bad_values() -> None:
    # what every edgekd before the spec wrote into the manifest: exact resize, no policy key
    old = {"resize": [32, 32], "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.2] * 3,
           "channel_order": "RGB", "layout": "NCHW", "scale": 1 / 255}
    assert PreprocessSpec.from_dict(old) == PreprocessSpec((32, 32), (0.5,) * 3, (0.2,) * 3)
    desc = {"input_size": [3, 16, 16], "mean": [0.1, 0.2, 0.3], "std": [1, 1, 1]}  # a model.json without a spec
    assert description_preprocessing(desc) == PreprocessSpec((16, 16), (0.1, 0.2, 0.3), (1.0, 1.0, 1.0))
    for change, message in [
        ({"resize_policy": "stretch"}, "resize_policy 'stretch'"),
        ({"resize": [0, 32]}, "no usable resize"),
        ({"resize_policy": "shorter_side", "center_crop": [32, 32], "shorter_side": 16},
         "must be a whole number >= the crop"),
        ({"interpolation": "cubic"}, "interpolation=cubic is not supported"),
        ({"std": [0.2, 0.0, 0.2]}, "must be positive"),
        ({"mean": [0.5]}, "three numbers each for mean and std"),
        ({"scale": "1/255"}, "a number for scale"),
    ]:
        with pytest.raises(EdgeKDError, match=message):
            PreprocessSpec.from_dict({**old, **change})


def test_model_json_and_manifest_carry_the_training_spec(digits_run_dir, export_dir) -> None:
    from edgekd.contracts.manifest import load_manifest, manifest_preprocessing
    from edgekd.contracts.rundir import read_description
    from edgekd.data import build_data

    spec = build_data("digits").preprocessing
    desc = read_description(digits_run_dir)
    assert desc["preprocessing"] == spec.to_dict() and description_preprocessing(desc) == spec
    assert manifest_preprocessing(load_manifest(export_dir)) == spec
