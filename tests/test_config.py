import pytest

from edgekd.config import load_config, save_config
from edgekd.errors import EdgeKDError


def test_yaml_then_flags(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: resnet8x4\nepochs: 240\nlr: 0.05\nmilestones: [150, 180, 210]\nschedule: multistep\n")
    cfg = load_config(path, {"epochs": 230, "lr": None})
    assert (cfg.model, cfg.epochs, cfg.lr, cfg.milestones) == ("resnet8x4", 230, 0.05, [150, 180, 210])
    save_config(cfg, tmp_path / "out.yaml")
    assert load_config(tmp_path / "out.yaml") == cfg


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"epochs": -1}, "epochs must be > 0"),
        ({"epochs": "ten"}, "must be of type int"),
        ({"optimizer": "rmsprop"}, "optimizer must be one of sgd, adamw"),
        ({"lr": 0}, "lr must be > 0"),
        ({"epochz": 3}, "unknown config key"),
        ({"epochs": 10, "milestones": [12]}, "milestones"),
        ({"batch_size": True}, "must be of type int"),
    ],
)
def test_bad_values(overrides, message):
    with pytest.raises(EdgeKDError, match=message):
        load_config(overrides=overrides)


def test_bad_files(tmp_path):
    with pytest.raises(EdgeKDError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("epochs: [unclosed\n")
    with pytest.raises(EdgeKDError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(EdgeKDError, match="mapping"):
        load_config(tmp_path / "list.yaml")


def test_every_shipped_recipe_is_valid():
    from pathlib import Path

    from edgekd.methods import method_class

    recipes = sorted((Path(__file__).parent.parent / "configs").rglob("*.yaml"))
    assert len(recipes) >= 9
    for path in recipes:
        cfg = load_config(path)
        assert set(cfg.method_args) <= set(method_class(cfg.method).defaults), path
