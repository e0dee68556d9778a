"""torchrun/DDP on CPU (gloo): two processes train one run dir; one process resumes it; mistakes are one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from conftest import run_cli, single_torch_thread

ARGS = ["--model", "resnet8", "--batch-size", "64", "--lr", "0.1", "--seed", "3", "--device", "cpu"]
# Held-out accuracy after 4 epochs, seeds 3/4/5 on one process: 0.864, 0.892, 0.850; on two: 0.903, 0.917 (seeds
# 3/4). Before the batch was global, two processes trained with twice the batch at the same lr: 0.44 against 0.70.
ACCURACY_NOISE = 0.08


def _edgekd(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "edgekd", *args], capture_output=True, text=True, timeout=400, env=env)


@pytest.mark.timeout(600)
def test_two_process_gloo_run_then_single_process_resume(tmp_path, monkeypatch, capsys):
    ddp = tmp_path / "ddp"
    proc = _edgekd("train", *ARGS, "--epochs", "4", "--nproc", "2", "--out", str(ddp))  # the global batch: 2 x 32
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("done:") == 1  # rank 0 alone reports
    summary = json.loads((ddp / "summary.json").read_text())
    assert summary["world_size"] == 2
    rows = [json.loads(line) for line in (ddp / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert set(load_file(str(ddp / "model.safetensors"))) >= {"conv1.weight", "fc.weight"}

    single = tmp_path / "single"  # the one-process runs in this process: no second interpreter start
    with single_torch_thread():
        code, _, err = run_cli(monkeypatch, capsys, "train", *ARGS, "--epochs", "4", "--out", str(single))
    assert code == 0, err[-3000:]
    ref_rows = [json.loads(line) for line in (single / "metrics.jsonl").read_text().splitlines()]
    # the same recipe on 1 and 2 processes: the same optimizer steps and learning rates, the same accuracy (within
    # the noise of another data order and per-process batch norm statistics)
    assert [r["lr"] for r in rows] == [r["lr"] for r in ref_rows]
    assert ([round(r["images_per_s"] * r["seconds"]) for r in rows]
            == [round(r["images_per_s"] * r["seconds"]) for r in ref_rows])
    assert summary["final_acc"] > 0.8 and abs(summary["final_acc"] - ref_rows[-1]["val_acc"]) < ACCURACY_NOISE

    with single_torch_thread():
        code, _, err = run_cli(monkeypatch, capsys, "train", *ARGS, "--epochs", "5", "--out", str(ddp), "--resume")
    assert code == 0, err[-3000:]
    after = json.loads((ddp / "summary.json").read_text())
    rows = [json.loads(line) for line in (ddp / "metrics.jsonl").read_text().splitlines()]
    assert after["world_size"] == 1 and [r["epoch"] for r in rows] == [1, 2, 3, 4, 5]
    assert after["final_acc"] >= summary["final_acc"] - 0.05


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", *ARGS, "--device", "cuda"], "no CUDA GPU is visible"),
        (["train", *ARGS, "--data", "cifar10:/no/such/root"], "/no/such/root is not a directory"),
        (["distill", "--student", "resnet8", "--method", "kd", "--teacher-arch", "resnet8"], "needs a teacher"),
        (["train", *ARGS, "--batch-size", "63"],
         "batch_size 63 (the global batch) does not split evenly over 2 processes"),
    ],
)
def test_nproc_checks_setup_once_before_launching(monkeypatch, capsys, tmp_path, args, message):
    # in this process: the checks run before anything is launched, so no rank may ever start
    monkeypatch.setattr("edgekd.distributed.launch_local", lambda *a: pytest.fail("launched despite the mistake"))
    code, _, err = run_cli(monkeypatch, capsys, *args, "--epochs", "1", "--nproc", "2", "--out", str(tmp_path / "run"))
    assert code == 2
    assert err.count(message) == 1 and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


@pytest.mark.timeout(300)
def test_nproc_mistake_found_by_the_ranks_is_one_line(tmp_path):
    """Both ranks find the batch too large for their half of the data: one message, no launcher traceback."""
    proc = _edgekd("train", *ARGS, "--epochs", "1", "--batch-size", "2000", "--nproc", "2",
                   "--out", str(tmp_path / "run"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: batch_size 2000 (global; 1000 per process) is larger than each process's share of the training split "
        "(1437 images): 718 over 2 processes; lower --batch-size"
    )
    assert not (tmp_path / "run").exists()


def test_nproc_asks_one_gpu_per_process(monkeypatch, tmp_path):
    import torch

    from edgekd.config import load_config
    from edgekd.engine.checks import preflight
    from edgekd.errors import EdgeKDError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cfg = load_config(overrides={"device": "auto", "out": str(tmp_path / "run")})
    preflight(cfg, 2)
    with pytest.raises(EdgeKDError,
                       match="--nproc 4 needs one GPU per process, and 2 are visible; pass --nproc 2, or --device cpu"):
        preflight(cfg, 4)
    preflight(load_config(overrides={"device": "cpu", "out": str(tmp_path / "run")}), 4)


@pytest.mark.timeout(300)
def test_two_processes_train_a_self_teacher_then_distil_from_it(tmp_path):
    """DR-KD with a pre-trained self-teacher under --nproc 2: the CE copy is trained first, on both processes,
    into the run's teacher/ dir, then the student learns from it; each stage reports once."""
    out = tmp_path / "drkd"
    proc = _edgekd("distill", "--method", "drkd", "--arg", "teacher=pretrained", "--student", "resnet8",
                   *ARGS[2:], "--epochs", "2", "--nproc", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("done: drkd") == 1
    summary, teacher = (json.loads((d / "summary.json").read_text()) for d in (out, out / "teacher"))
    assert (summary["method"], summary["world_size"], summary["teacher"]) == ("drkd", 2, str(out / "teacher"))
    assert (teacher["method"], teacher["world_size"], teacher["epochs"]) == ("ce", 2, 2)
    for run in (out, out / "teacher"):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in rows] == [1, 2] and (run / "model.safetensors").is_file()
    assert summary["final_acc"] > 0.3 and teacher["final_acc"] > 0.3  # chance is 0.1; both reach about 0.5 here


def test_nproc_lets_a_self_teacher_method_train_its_own_teacher(tmp_path):
    """tfkd-self, like drkd's pre-trained self-teacher, needs no --teacher under --nproc; kd still does."""
    from edgekd.config import load_config
    from edgekd.engine.checks import preflight
    from edgekd.errors import EdgeKDError

    for method, args in (("tfkd-self", {}), ("drkd", {"teacher": "pretrained"})):
        assert preflight(load_config(overrides={"device": "cpu", "method": method, "method_args": args,
                                                "out": str(tmp_path / "run")}), 2) is None
    with pytest.raises(EdgeKDError, match="needs a teacher"):
        preflight(load_config(overrides={"device": "cpu", "method": "kd", "out": str(tmp_path / "run")}), 2)
