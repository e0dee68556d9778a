"""The trainer: run-dir contract, resume equivalence, divergence handling."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from edgekd.config import load_config
from edgekd.errors import EdgeKDError
from edgekd.methods.base import _REGISTRY, Method, register_method
from edgekd.train import CHECKPOINT, _Run, lr_factor, run_training

# digits are 8x8 pixels: 16-px inputs lose nothing of them and cost a quarter of the default 32 px
FAST = {"data": "digits", "model": "resnet8", "batch_size": 128, "lr": 0.1, "workers": 0, "image_size": 16}


def _cfg(tmp_path, name, **kw):
    return load_config(overrides={**FAST, "out": str(tmp_path / name), **kw})


def test_run_dir_contract(tmp_path):
    summary = run_training(_cfg(tmp_path, "run", epochs=2), show_progress=False)
    out = tmp_path / "run"
    for name in ("model.safetensors", "model.json", "config.yaml", "metrics.jsonl", "summary.json", CHECKPOINT,
                 "curves.png"):
        assert (out / name).is_file(), name
    desc = json.loads((out / "model.json").read_text())
    assert desc["arch"] == "resnet8" and desc["num_classes"] == 10 and desc["input_size"] == [3, 16, 16]
    assert desc["dataset"] == "digits" and len(desc["mean"]) == 3 and desc["class_names"][3] == "3"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert set(rows[0]) >= {"losses", "train_acc", "val_acc", "lr", "seconds", "images_per_s"}
    assert rows[0]["losses"]["ce"] > rows[1]["losses"]["ce"]  # it learns
    saved = json.loads((out / "summary.json").read_text())
    assert saved["final_acc"] == rows[-1]["val_acc"] == summary["final_acc"]
    assert saved["best_acc"] == max(r["val_acc"] for r in rows)
    images = 2 * (1437 // 128 * 128)  # two epochs of the digits training split in whole batches of 128
    assert saved["seconds"] == pytest.approx(sum(r["seconds"] for r in rows))
    assert saved["images_per_s"] == pytest.approx(images / saved["seconds"])  # the run's rate, not the last epoch's
    assert set(load_file(str(out / "model.safetensors"))) >= {"conv1.weight", "fc.weight"}
    assert not (out / "tensorboard").exists()  # TensorBoard events only with --tensorboard
    # a second run into the same dir without --resume is refused, and changes nothing
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(EdgeKDError, match="already holds a run"):
        run_training(_cfg(tmp_path, "run", epochs=2), show_progress=False)
    assert (out / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize("method", [{}, {"method": "drkd", "method_args": {"teacher": "ema"}}],
                         ids=["ce", "drkd-ema"])
def test_resume_reproduces_uninterrupted_run(tmp_path, monkeypatch, method):
    full = run_training(_cfg(tmp_path, "full", epochs=2, **method), show_progress=False)

    original = _Run._train_epoch

    def crash_in_second_epoch(self, epoch, progress):
        if epoch == 1:
            raise KeyboardInterrupt  # as if killed mid-run, after the epoch-1 checkpoint
        return original(self, epoch, progress)

    monkeypatch.setattr(_Run, "_train_epoch", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_training(_cfg(tmp_path, "killed", epochs=2, **method), show_progress=False)
    assert torch.load(tmp_path / "killed" / CHECKPOINT, weights_only=True)["epoch"] == 1
    monkeypatch.setattr(_Run, "_train_epoch", original)
    resumed = run_training(_cfg(tmp_path, "killed", epochs=2, resume=True, **method), show_progress=False)

    assert resumed["final_acc"] == full["final_acc"]
    a = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["losses"] for r in a] == [r["losses"] for r in b]
    assert [r["val_acc"] for r in a] == [r["val_acc"] for r in b]
    wa = load_file(str(tmp_path / "full" / "model.safetensors"))
    wb = load_file(str(tmp_path / "killed" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture
def diverging_method():
    @register_method("test-diverge")
    class Diverge(Method):
        defaults = {"at_epoch": 1}

        def forward_train(self, x, y, epoch):
            logits = self.student(x)
            loss = torch.nn.functional.cross_entropy(logits, y)
            return logits, {"ce": loss * (float("nan") if epoch == self.args["at_epoch"] else 1.0)}

    yield
    del _REGISTRY["test-diverge"]


def test_nan_loss_stops_with_message_and_keeps_checkpoint(tmp_path, diverging_method):
    cfg = _cfg(tmp_path, "nan", epochs=3, method="test-diverge")
    with pytest.raises(EdgeKDError, match=r"loss became nan at epoch 2.*last good checkpoint.*epoch 1\) is intact"):
        run_training(cfg, show_progress=False)
    state = torch.load(tmp_path / "nan" / CHECKPOINT, weights_only=True)
    assert state["epoch"] == 1 and all(
        torch.isfinite(v).all() for v in state["student"].values() if v.is_floating_point())
    assert not (tmp_path / "nan" / "model.safetensors").exists()


def test_a_run_that_fails_in_its_first_epoch_leaves_no_folder(tmp_path, diverging_method):
    cfg = _cfg(tmp_path, "early", epochs=2, method="test-diverge", method_args={"at_epoch": 0}, image_size=16)
    with pytest.raises(EdgeKDError, match="Nothing was saved: it happened in the first epoch"):
        run_training(cfg, show_progress=False)
    assert not (tmp_path / "early").exists()
    nested = _cfg(tmp_path, "new/sub/early", epochs=2, method="test-diverge", method_args={"at_epoch": 0},
                  image_size=16)
    with pytest.raises(EdgeKDError, match="Nothing was saved"):
        run_training(nested, show_progress=False)
    assert not (tmp_path / "new").exists()


def test_a_folder_of_other_files_is_not_used_as_a_run_dir(tmp_path):
    (tmp_path / "exports").mkdir()
    (tmp_path / "exports" / "manifest.json").write_text("{}")
    with pytest.raises(EdgeKDError, match=r"exports already exists and holds other files \(manifest.json\)"):
        run_training(_cfg(tmp_path, "exports", epochs=1, image_size=16), show_progress=False)
    assert [p.name for p in (tmp_path / "exports").iterdir()] == ["manifest.json"]


def test_lr_schedules():
    cos = load_config(overrides={"epochs": 10, "schedule": "cosine", "warmup_epochs": 2})
    assert lr_factor(cos, 1.0) == pytest.approx(0.5, abs=1e-6)
    assert lr_factor(cos, 2.0) == pytest.approx(1.0)
    assert lr_factor(cos, 6.0) == pytest.approx(0.5)
    step = load_config(overrides={"epochs": 240, "schedule": "multistep", "milestones": [150, 180, 210]})
    assert [lr_factor(step, e) for e in (0, 149.9, 150, 180, 239)] == pytest.approx([1, 1, 0.1, 0.01, 0.001])


def test_corrupt_checkpoint_is_a_user_error(tmp_path):
    run_training(_cfg(tmp_path, "c", epochs=1), show_progress=False)
    (tmp_path / "c" / CHECKPOINT).write_bytes(b"\x00garbage" * 10)
    with pytest.raises(EdgeKDError, match="cannot be resumed"):
        run_training(_cfg(tmp_path, "c", epochs=2, resume=True), show_progress=False)


@pytest.mark.parametrize("mode, label", [("snapshot", "self (previous-epoch snapshot)"),
                                         ("online", "self (own logits, same forward)")])
def test_drkd_names_its_own_self_teacher(tmp_path, mode, label):
    cfg = _cfg(tmp_path, "drkd", method="drkd", method_args={"teacher": mode}, epochs=2, image_size=16)
    summary = run_training(cfg, show_progress=False)
    assert summary["teacher"] == label  # it once said <out>/teacher, a folder never written
    assert json.loads((tmp_path / "drkd" / "model.json").read_text())["teacher"] == label
    assert not (tmp_path / "drkd" / "teacher").exists()
    assert {"ce", "kd"} <= set(json.loads((tmp_path / "drkd" / "metrics.jsonl").read_text().splitlines()[-1])["losses"])


def test_a_teacher_trained_on_other_data_or_another_size_is_refused(tmp_path):
    run_training(_cfg(tmp_path, "teacher", epochs=1, image_size=16), show_progress=False)
    teacher = str(tmp_path / "teacher")
    with pytest.raises(EdgeKDError, match="trained on 3x16x16 inputs but this run feeds 3x32x32; pass --image-size 16"):
        run_training(_cfg(tmp_path, "big", epochs=1, method="kd", teacher=teacher, image_size=32), show_progress=False)
    with pytest.raises(EdgeKDError, match="trained on other classes"):
        run_training(_cfg(tmp_path, "other", epochs=1, method="kd", teacher=teacher, data="synthetic", image_size=16),
                     show_progress=False)
    assert not (tmp_path / "big").exists() and not (tmp_path / "other").exists()


@pytest.fixture
def linear_probe():
    """A model without batch statistics, so that a step over micro-batches can equal one step over the batch."""
    from torch import nn

    from edgekd.models import register_model
    from edgekd.models.registry import _REGISTRY

    register_model("test-linear-probe")(
        lambda num_classes: nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, num_classes)))
    yield "test-linear-probe"
    _REGISTRY.pop("test-linear-probe")


def test_gradient_accumulation_takes_the_same_steps_as_the_whole_batch(tmp_path, linear_probe):
    common = {"model": linear_probe, "epochs": 1, "batch_size": 64, "lr": 0.05}
    run_training(_cfg(tmp_path, "whole", **common), show_progress=False)
    run_training(_cfg(tmp_path, "accumulated", accumulate=4, **common), show_progress=False)
    whole = load_file(str(tmp_path / "whole" / "model.safetensors"))
    accumulated = load_file(str(tmp_path / "accumulated" / "model.safetensors"))
    assert whole.keys() == accumulated.keys()
    for name in whole:
        assert not torch.equal(whole[name], torch.zeros_like(whole[name]))
        torch.testing.assert_close(accumulated[name], whole[name], rtol=1e-4, atol=1e-5)
    rows = [json.loads((tmp_path / d / "metrics.jsonl").read_text()) for d in ("whole", "accumulated")]
    assert rows[0]["lr"] == rows[1]["lr"] and rows[0]["train_acc"] == pytest.approx(rows[1]["train_acc"], abs=1e-9)


def test_the_global_batch_must_split_evenly(tmp_path):
    from edgekd.train import micro_batch

    assert micro_batch(_cfg(tmp_path, "r", batch_size=64, accumulate=2), 4) == 8
    with pytest.raises(EdgeKDError, match=r"batch_size 60 \(the global batch\) does not split evenly over 4 "
                                          r"processes x 2 accumulation steps; pass a multiple of 8"):
        micro_batch(_cfg(tmp_path, "r", batch_size=60, accumulate=2), 4)
    with pytest.raises(EdgeKDError, match="accumulate must be > 0"):
        _cfg(tmp_path, "r", accumulate=0)


def test_tensorboard_scalars_are_the_metrics_rows(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_training(_cfg(tmp_path, "tb", epochs=2, tensorboard=True), show_progress=False)
    rows = [json.loads(line) for line in (tmp_path / "tb" / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    events.Reload()
    tags = {"loss/ce": lambda r: r["losses"]["ce"], "accuracy/train": lambda r: r["train_acc"],
            "accuracy/val": lambda r: r["val_acc"], "lr": lambda r: r["lr"],
            "images_per_s": lambda r: r["images_per_s"]}
    assert set(events.Tags()["scalars"]) == set(tags)
    for tag, value in tags.items():
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2]
        assert [s.value for s in scalars] == pytest.approx([value(r) for r in rows], rel=1e-6)
