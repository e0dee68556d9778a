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


def test_arg_flags_add_to_a_recipes_method_options(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("method: r2kd\nmethod_args: {rank: soft, prune_ratio: 0.2}\n")
    assert load_config(path, {"method_args": {"rank": "hard"}}).method_args == {"rank": "hard", "prune_ratio": 0.2}


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"epochs": -1}, "epochs must be > 0"),
        ({"epochs": "ten"}, "must be of type int"),
        ({"optimizer": "rmsprop"}, "optimizer must be one of sgd, adamw"),
        ({"lr": 0}, "lr must be > 0"),
        ({"epochz": 3}, "unknown config key"),
        ({"epochs": 10, "schedule": "multistep", "milestones": [12]}, "milestones"),
        ({"batch_size": True}, "must be of type int"),
        ({"schedule": "multistep", "epochs": 10, "milestones": ["a", "b"]}, "milestones must be whole epochs"),
        ({"milestones": [0.5]}, "milestones must be whole epochs"),
        ({"seed": 99999999999999999999}, r"seed must be in \[0, 2\*\*32\)"),
        ({"seed": -1}, "seed must be in"),
        ({"momentum": 5}, r"momentum must be in \[0, 1\)"),
        ({"lr_decay": -2}, r"lr_decay must be in \(0, 1\]"),
        ({"method": "kd", "method_args": {"alpha": "abc"}}, "option alpha must be a number, got 'abc'"),
        ({"method": "kd", "method_args": {"T": 0}}, "option T must be > 0"),
        ({"method": "kd", "method_args": {"T": -1}}, "option T must be > 0"),
        ({"method": "drkd", "method_args": {"alpha": 2}}, r"option alpha must be in \[0, 1\]"),
        ({"method": "drkd", "method_args": {"teacher": "teacher"}},
         "option teacher must be one of online, snapshot, dynamic, ema, pretrained"),
        ({"method": "dkd", "method_args": {"warmup": "abc"}}, "option warmup must be an integer"),
        ({"method": "dkd", "method_args": {"warmup": 2.5}}, "option warmup must be an integer"),
        ({"method": "r2kd", "method_args": {"prune_ratio": 1.0}}, r"option prune_ratio must be in \[0, 1\)"),
        ({"method": "r2kd", "method_args": {"augment": "cutmixx"}}, "option augment must be one of cutmix, mixup"),
        ({"method": "r2kd", "method_args": {"rank": True}}, "option rank must be str"),
        ({"method": "kd", "method_args": {"beta": 1}}, "has no option"),
    ],
)
def test_bad_values(overrides, message):
    with pytest.raises(EdgeKDError, match=message):
        load_config(overrides=overrides)


def test_numbers_are_typed_like_their_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    # YAML 1.1 reads 1e-3 as a string
    path.write_text("lr: 1e-3\nmethod: dkd\nmethod_args: {T: 2, warmup: 5.0, alpha: 1e-1}\n")
    cfg = load_config(path)
    assert cfg.lr == 0.001 and cfg.method_args == {"T": 2.0, "warmup": 5, "alpha": 0.1}
    assert isinstance(cfg.method_args["T"], float) and isinstance(cfg.method_args["warmup"], int)


def test_a_binary_recipe_is_refused(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(EdgeKDError, match="is not a text file"):
        load_config(path)


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
    from edgekd.settings import SECTIONS, recipe_section

    recipes = sorted((Path(__file__).parent.parent / "configs").rglob("*.yaml"))
    assert len(recipes) >= 9
    for path in recipes:
        cfg = load_config(path)
        assert set(cfg.method_args) <= set(method_class(cfg.method).defaults), path
        for section in SECTIONS:  # the later stages' sections hold their settings only
            recipe_section(path, section)


def test_milestones_bind_only_the_multistep_schedule():
    """A CIFAR recipe's milestones (150, 180, 210) must not stop a short cosine run."""
    cfg = load_config(overrides={"epochs": 10, "milestones": [150, 180, 210], "schedule": "cosine"})
    assert cfg.milestones == [150, 180, 210]
    with pytest.raises(EdgeKDError, match=r"--milestones '' to decay at 62.5/75/87.5%"):
        load_config(overrides={"epochs": 10, "milestones": [150], "schedule": "multistep"})
