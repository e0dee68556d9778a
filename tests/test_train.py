"""The trainer: run-dir contract, resume equivalence, divergence handling."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from edgekd.config import load_config
from edgekd.contracts.rundir import CHECKPOINT
from edgekd.engine import Callback, lr_factor
from edgekd.errors import EdgeKDError
from edgekd.methods.base import METHODS, Method, register_method
from edgekd.train import run_training

# digits are 8x8 pixels: 16-px inputs lose nothing of them and cost a quarter of the default 32 px
FAST = {"data": "digits", "model": "resnet8", "batch_size": 128, "lr": 0.1, "workers": 0, "image_size": 16}
NATIVE = 8  # digits' own size: a quarter of FAST's cost again, for tests of the trainer's plumbing, not of learning


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


def _assert_resume_reproduces_uninterrupted_run(tmp_path, monkeypatch, **overrides) -> tuple[Path, Path]:
    """Train two epochs into full/, and into killed/ with a crash in epoch 2 then --resume; assert the two runs'
    losses, accuracies and weights are bit-identical (CPU). Returns (full, killed) for further checks."""
    full_dir, killed_dir = tmp_path / "full", tmp_path / "killed"
    full = run_training(_cfg(tmp_path, "full", epochs=2, **overrides), show_progress=False)

    class CrashInSecondEpoch(Callback):
        def on_epoch_start(self, trainer):
            if trainer.epoch == 1:
                raise KeyboardInterrupt  # as if killed mid-run, after the epoch-1 checkpoint

    with pytest.raises(KeyboardInterrupt):
        run_training(_cfg(tmp_path, "killed", epochs=2, **overrides), show_progress=False,
                     callbacks=[CrashInSecondEpoch()])
    assert torch.load(killed_dir / CHECKPOINT, weights_only=True)["epoch"] == 1
    resumed = run_training(_cfg(tmp_path, "killed", epochs=2, resume=True, **overrides), show_progress=False)

    assert resumed["final_acc"] == full["final_acc"]
    a = [json.loads(x) for x in (full_dir / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (killed_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in b] == [1, 2]
    assert [r["losses"] for r in a] == [r["losses"] for r in b]
    assert [r["val_acc"] for r in a] == [r["val_acc"] for r in b]
    wa = load_file(str(full_dir / "model.safetensors"))
    wb = load_file(str(killed_dir / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    return full_dir, killed_dir


@pytest.mark.parametrize("method", [{}, {"method": "drkd", "method_args": {"teacher": "ema"}}],
                         ids=["ce", "drkd-ema"])
def test_resume_reproduces_uninterrupted_run(tmp_path, monkeypatch, method):
    _assert_resume_reproduces_uninterrupted_run(tmp_path, monkeypatch, **method)


@pytest.fixture(scope="module")
def random_teacher(tmp_path_factory) -> str:
    """An untrained resnet8 run dir for digits at NATIVE px: resuming must reproduce distillation from any teacher."""
    from edgekd.data import build_data
    from edgekd.models import create_model
    from edgekd.rundir import model_description, save_model

    torch.manual_seed(0)
    bundle = build_data(FAST["data"], image_size=NATIVE)
    out = tmp_path_factory.mktemp("teacher") / "resnet8"
    save_model(out, create_model("resnet8", bundle.num_classes).eval(), model_description("resnet8", bundle))
    return str(out)


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("method, terms", [("kd", {"ce", "kd"}), ("r2kd", {"ce", "value", "rank"}),
                                           ("dkd", {"ce", "kd"})])
def test_resume_of_a_distilled_run_reproduces_uninterrupted_run(tmp_path, monkeypatch, random_teacher, method, terms):
    full, killed = _assert_resume_reproduces_uninterrupted_run(tmp_path, monkeypatch, method=method,
                                                               teacher=random_teacher, image_size=NATIVE)
    for out in (full, killed):  # it did distil from that teacher
        assert json.loads((out / "summary.json").read_text())["teacher"] == random_teacher
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        assert all(set(r["losses"]) == terms for r in rows)
        assert all(r["losses"][k] != 0 for r in rows for k in terms)


@pytest.mark.usefixtures("one_torch_thread")
def test_resume_with_tensorboard_reproduces_uninterrupted_run_and_its_events(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    full, killed = _assert_resume_reproduces_uninterrupted_run(tmp_path, monkeypatch, tensorboard=True,
                                                               image_size=NATIVE)
    # the killed run's events file, and the resumed run's
    assert len(list((killed / "tensorboard").glob("events.out.tfevents.*"))) == 2
    assert len(list((full / "tensorboard").glob("events.out.tfevents.*"))) == 1
    scalars = {}
    for out in (full, killed):
        events = EventAccumulator(str(out / "tensorboard"))
        events.Reload()
        # images_per_s is a timing, the one value a resumed run cannot reproduce
        scalars[out] = {tag: [(s.step, s.value) for s in events.Scalars(tag)]
                        for tag in ("loss/ce", "accuracy/train", "accuracy/val", "lr")}
    assert scalars[killed] == scalars[full]
    rows = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [step for step, _ in scalars[killed]["accuracy/val"]] == [r["epoch"] for r in rows] == [1, 2]
    assert [value for _, value in scalars[killed]["accuracy/val"]] == pytest.approx([r["val_acc"] for r in rows])


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
    METHODS.unregister("test-diverge")


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
    from edgekd.models.registry import MODELS

    register_model("test-linear-probe")(
        lambda num_classes: nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, num_classes)))
    yield "test-linear-probe"
    MODELS.unregister("test-linear-probe")


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
    from edgekd.engine.checks import micro_batch

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


def _epoch_losses(out: Path, term: str = "ce") -> list[float]:
    return [json.loads(line)["losses"][term] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.usefixtures("one_torch_thread")
def test_bf16_autocast_on_cpu_trains_as_fp32_does(tmp_path):
    run_training(_cfg(tmp_path, "bf16", epochs=2, image_size=NATIVE, amp="bf16", device="cpu"), show_progress=False)
    run_training(_cfg(tmp_path, "fp32", epochs=2, image_size=NATIVE, amp="off", device="cpu"), show_progress=False)
    bf16, fp32 = _epoch_losses(tmp_path / "bf16"), _epoch_losses(tmp_path / "fp32")
    assert len(bf16) == 2 and all(math.isfinite(v) for v in bf16) and bf16[1] < bf16[0]
    assert bf16 != fp32 and bf16 == pytest.approx(fp32, rel=0.03)  # bf16 was in effect, and costs no learning
    summary = json.loads((tmp_path / "bf16" / "summary.json").read_text())
    assert summary["device"] == "cpu" and summary["final_acc"] > 0.2  # chance is 0.1
    weights = load_file(str(tmp_path / "bf16" / "model.safetensors"))
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


@pytest.mark.usefixtures("one_torch_thread")
def test_adamw_trains(tmp_path):
    cfg = _cfg(tmp_path, "adamw", epochs=2, image_size=NATIVE, optimizer="adamw", lr=0.01)
    summary = run_training(cfg, show_progress=False)
    losses = _epoch_losses(tmp_path / "adamw")
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses) and losses[1] < losses[0]
    assert summary["final_acc"] > 0.3
    state = torch.load(tmp_path / "adamw" / CHECKPOINT, weights_only=True)["optimizer"]
    assert set(state["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}  # AdamW's moments, not SGD's momentum
    assert state["param_groups"][0]["weight_decay"] == pytest.approx(5e-4)


@pytest.fixture
def tiny_convnet():
    """A conv-BN-linear model of its own class: torch.compile skips a bare nn.Sequential (torch code) unseen."""
    from torch import nn

    from edgekd.models import register_model
    from edgekd.models.registry import MODELS

    class TinyConvNet(nn.Module):
        def __init__(self, num_classes: int) -> None:
            super().__init__()
            self.conv, self.bn, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Linear(8, num_classes)

        def forward(self, x):
            return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))

    register_model("test-tiny-convnet")(TinyConvNet)
    yield "test-tiny-convnet"
    MODELS.unregister("test-tiny-convnet")


# what torch._inductor.config.cpp.cxx searches: TORCH_INDUCTOR_INSTALL_GXX (a conda download) aside, $CXX or g++
CXX = os.environ.get("CXX", "clang++" if sys.platform == "darwin" else "g++")


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.skipif(shutil.which(CXX) is None, reason=f"torch.compile on CPU builds C++ kernels, and {CXX} is not on "
                                                      "PATH (set CXX to a C++ compiler)")
def test_compile_trains_as_eager_does(tmp_path, tiny_convnet):
    from torch._dynamo.utils import counters  # what torch's own tests count compiled graphs with

    # two steps an epoch, one validation batch: one graph for training and one for evaluation
    common = {"model": tiny_convnet, "data": "synthetic", "data_options": {"count": 128, "val_count": 64, "size": 16},
              "batch_size": 64, "epochs": 2}
    graphs = counters["stats"]["unique_graphs"]
    compiled = run_training(_cfg(tmp_path, "compiled", compile=True, **common), show_progress=False)
    assert counters["stats"]["unique_graphs"] > graphs  # the student did run compiled
    eager = run_training(_cfg(tmp_path, "eager", **common), show_progress=False)
    losses = _epoch_losses(tmp_path / "compiled")
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert losses == pytest.approx(_epoch_losses(tmp_path / "eager"), rel=1e-4)
    assert compiled["final_acc"] == json.loads((tmp_path / "compiled" / "summary.json").read_text())["final_acc"]
    assert compiled["final_acc"] == pytest.approx(eager["final_acc"], abs=1 / 64)
    # the compiled run saves the model's own names (no _orig_mod. prefix), as an eager run does
    weights, reference = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("compiled", "eager"))
    assert weights.keys() == reference.keys()
    for name in weights:
        torch.testing.assert_close(weights[name], reference[name], rtol=1e-3, atol=1e-4)
    assert torch.load(tmp_path / "compiled" / CHECKPOINT, weights_only=True)["student"].keys() == weights.keys()


@pytest.mark.parametrize("method", ["kd", "dkd", "r2kd", "sld", "dist"])
def test_cpu_bf16_autocast_keeps_the_distillation_losses(method):
    """The losses one training step takes under the trainer's CPU bf16 autocast are those of fp32, to AMP's rounding
    of the logits (<0.2% here once the softmaxes run in fp32)."""
    from edgekd.methods import build_method
    from edgekd.models import create_model

    torch.manual_seed(0)
    student = create_model("resnet8", 10)
    torch.manual_seed(1)
    teacher = create_model("resnet8", 10)
    distil = build_method(method, student, teacher, num_classes=10, input_shape=(3, 16, 16), epochs=2).train()
    x, y = torch.randn(64, 3, 16, 16), torch.arange(64) % 10
    torch.manual_seed(2)  # r2kd draws its augmented view
    with torch.no_grad():
        _, fp32 = distil(x, y, 0)
    torch.manual_seed(2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # as the trainer's Parts.autocast does
        _, bf16 = distil(x, y, 0)
    assert set(bf16) == set(fp32) and all(v != 0 for v in fp32.values())
    for name, value in fp32.items():
        assert float(bf16[name]) == pytest.approx(float(value), rel=0.02), name


def test_compile_without_a_cpp_compiler_is_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    from conftest import run_cli

    monkeypatch.setenv("CXX", str(tmp_path / "no-such-c++"))
    code, _, err = run_cli(monkeypatch, capsys, "train", "--data", "synthetic", "--model", "resnet8", "--epochs", "1",
                           "--compile", "--device", "cpu", "--out", str(tmp_path / "run"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--compile on CPU needs a C++ compiler" in err and "no-such-c++ is not on PATH" in err
    assert not (tmp_path / "run").exists()


def test_trainer_fires_its_events_in_order_and_a_failure_before_the_first_checkpoint_leaves_nothing(tmp_path):
    class Record(Callback):
        def __init__(self, fail_at=None):
            self.events, self.fail_at = [], fail_at

        def __getattribute__(self, name):
            if name.startswith("on_"):
                def record(trainer):
                    self.events.append((name, trainer.epoch))
                    if (name, trainer.epoch) == self.fail_at:
                        raise RuntimeError("boom")
                return record
            return super().__getattribute__(name)

    seen = Record()
    run_training(_cfg(tmp_path, "ok", epochs=2, image_size=NATIVE, batch_size=512), show_progress=False,
                 callbacks=[seen])
    steps = 1437 // 512
    epoch = lambda e: [("on_epoch_start", e), *[("on_step_end", e)] * steps, ("on_epoch_end", e)]  # noqa: E731
    assert seen.events == [("on_fit_start", 0), *epoch(0), *epoch(1), ("on_fit_end", 1)]

    failing = Record(fail_at=("on_step_end", 0))
    with pytest.raises(RuntimeError, match="boom"):
        run_training(_cfg(tmp_path / "new" / "deeper", "run", epochs=2, image_size=NATIVE), show_progress=False,
                     callbacks=[failing])
    assert failing.events[-1] == ("on_exception", 0)
    assert not (tmp_path / "new").exists()  # the run dir and the folders made for it are gone
