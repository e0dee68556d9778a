"""The command line's success paths, one test per option group (issue #41): each runs the real command in-process on
tiny data and checks the files and numbers it writes, not only its exit code."""

from __future__ import annotations

import base64
import json
import re
import shutil
import socket
import sys
from pathlib import Path

import pytest
import yaml

import test_remote
from conftest import run_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 64 training and 32 held-out 16x16 images of 4 classes: an epoch is two steps
TINY_DATA = {"classes": 4, "size": 16, "count": 64, "val_count": 32}

# a real sshd on loopback for `bench --remote` (module-scoped; skips where OpenSSH is not installed)
sshd = test_remote.sshd


def tiny_recipe(tmp_path: Path, epochs: int = 2) -> Path:
    """A recipe for the tiny synthetic data (the CLI has no flag for data options)."""
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"data": "synthetic", "data_options": TINY_DATA, "epochs": epochs,
                                    "batch_size": 32, "device": "cpu"}))
    return path


def random_teacher(path: Path) -> Path:
    """A state_dict file of an untrained 4-class resnet8: wrong on most images, so rectifying it changes targets."""
    import torch

    from edgekd.models import create_model

    torch.manual_seed(1)
    torch.save(create_model("resnet8", TINY_DATA["classes"]).state_dict(), path)
    return path


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def table_names(out: str) -> list[str]:
    """The first column of a Rich table's rows."""
    return re.findall(r"^│ (\S+) +│", out, flags=re.MULTILINE)


# ------------------------------------------------------------------ 1. distill --student --arg --rectify


def test_distill_records_student_method_args_and_rectify_and_trains(monkeypatch, capsys, tmp_path):
    recipe, teacher = tiny_recipe(tmp_path), random_teacher(tmp_path / "teacher.pt")
    common = ["distill", "-c", str(recipe), "--method", "kd", "--teacher", str(teacher), "--teacher-arch", "resnet8",
              "--student", "resnet14", "--arg", "T=2", "--arg", "alpha=0.7"]
    code, out, err = run_cli(monkeypatch, capsys, *common, "--rectify", "-o", str(tmp_path / "rect"))
    assert code == 0, err
    run = tmp_path / "rect"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"] == "resnet14"  # not the default resnet20
    assert config["method_args"] == {"T": 2.0, "alpha": 0.7} and config["rectify"] is True
    assert config["data"] == "synthetic" and config["data_options"] == TINY_DATA and config["epochs"] == 2
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["method"], summary["model"], summary["teacher"], summary["epochs"]) == (
        "kd", "resnet14", str(teacher), 2)
    assert json.loads((run / "model.json").read_text())["arch"] == "resnet14"
    history = read_lines(run / "metrics.jsonl")
    assert [r["epoch"] for r in history] == [1, 2]
    assert all(set(r["losses"]) == {"ce", "kd"} and r["losses"]["kd"] > 0 for r in history)
    assert summary["final_acc"] == history[-1]["val_acc"] and summary["best_acc"] == max(r["val_acc"] for r in history)
    assert f"best held-out acc {summary['best_acc']:.4f}" in " ".join(out.split())

    # the same run without --rectify distils from other targets: --rectify reached the loss, not only config.yaml
    code, _, err = run_cli(monkeypatch, capsys, *common, "--no-rectify", "-o", str(tmp_path / "plain"))
    assert code == 0, err
    assert yaml.safe_load((tmp_path / "plain" / "config.yaml").read_text())["rectify"] is False
    plain = read_lines(tmp_path / "plain" / "metrics.jsonl")
    assert plain[0]["losses"]["kd"] != pytest.approx(history[0]["losses"]["kd"], rel=1e-3)


# ------------------------------------------------------------------ 2. export --formats --fp16 --int8 --calib-method
# --max-drop


def test_export_openvino_with_fp16_writes_only_that_format_at_both_precisions(monkeypatch, capsys, tmp_path,
                                                                               digits_run_dir):
    out = tmp_path / "ov"
    code, _, err = run_cli(monkeypatch, capsys, "export", str(digits_run_dir), "-o", str(out),
                           "--formats", "openvino", "--fp16")
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    artifacts = manifest["artifacts"]
    assert set(artifacts) == {"openvino-fp32", "openvino-fp16"} and manifest["dropped"] == {}
    assert artifacts["openvino-fp16"]["files"] == ["openvino-fp16/model.xml", "openvino-fp16/model.bin"]
    assert all((out / f).is_file() for a in artifacts.values() for f in a["files"])
    assert not list(out.glob("*.onnx"))  # --formats openvino: no ONNX artifact, and the scratch graph is gone
    fp32, fp16 = ((out / f"openvino-{p}" / "model.bin").stat().st_size for p in ("fp32", "fp16"))
    assert 0.4 * fp32 < fp16 < 0.6 * fp32  # the weights really are half-precision
    assert artifacts["openvino-fp16"]["precision"] == "fp16"
    assert artifacts["openvino-fp16"]["accuracy"] == pytest.approx(manifest["eval"]["torch_accuracy"], abs=0.01)


def test_export_onnx_int8_calibrates_as_asked_and_max_drop_none_is_plain_ptq(monkeypatch, capsys, tmp_path,
                                                                            digits_run_dir):
    out = tmp_path / "onnx"
    code, _, err = run_cli(monkeypatch, capsys, "export", str(digits_run_dir), "-o", str(out), "--formats", "onnx",
                           "--int8", "--calib-method", "entropy", "--calib-samples", "64", "--max-drop", "none")
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["artifacts"]) == {"onnx-fp32", "onnx-int8"} and manifest["dropped"] == {}
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.int8.onnx", "model.onnx"]
    quantization = manifest["artifacts"]["onnx-int8"]["quantization"]
    assert quantization["calibration"] == {"split": "train", "samples": 64, "method": "entropy"}
    assert "search" not in quantization  # 'none': one plain PTQ, no search for a bound
    assert manifest["artifacts"]["onnx-int8"]["accuracy"] > 0.8

    # a bound in points: the search starts with the asked calibration, which meets a loose bound at once
    out = tmp_path / "bounded"
    code, _, err = run_cli(monkeypatch, capsys, "export", str(digits_run_dir), "-o", str(out), "--formats", "onnx",
                           "--int8", "--calib-method", "percentile", "--calib-samples", "64", "--max-drop", "50")
    assert code == 0, err
    quantization = json.loads((out / "manifest.json").read_text())["artifacts"]["onnx-int8"]["quantization"]
    assert [(t["calibration"], t["samples"]) for t in quantization["search"]] == [("percentile", 64)]
    assert quantization["calibration"]["method"] == "percentile" and quantization["search"][0]["drop_points"] <= 50


# ------------------------------------------------------------------ 3. models --tv --timm --match


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Any connection attempt fails the test; weight caches point at an empty folder that must stay empty."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access during the test: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    cache = tmp_path / "cache"
    cache.mkdir()
    for var in ("TORCH_HOME", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.setenv(var, str(cache / var.lower()))
    yield cache
    assert not any(cache.rglob("*")), sorted(cache.rglob("*"))


def test_models_lists_the_asked_families_filtered_by_match(monkeypatch, capsys, no_network):
    from edgekd.models import list_models

    monkeypatch.setenv("COLUMNS", "160")
    code, out, err = run_cli(monkeypatch, capsys, "models", "--match", "resnet8*", "--num-classes", "10")
    assert code == 0, err
    assert table_names(out) == ["resnet8", "resnet8x4"]  # not resnet20, nor any tv/ or timm/ resnet
    names = list_models()
    for prefix, flag in (("tv/", "--tv"), ("timm/", "--timm")):
        count = sum(n.startswith(prefix) for n in names)
        assert count > 10 and f"plus {count} " in out and f"{flag} lists them" in out

    code, out, err = run_cli(monkeypatch, capsys, "models", "--tv", "--timm", "--match", "*/RESNET18",
                             "--num-classes", "10")
    assert code == 0, err
    rows = {m[0]: m[1:] for m in re.findall(r"^│ (\S+) +│ +(\S+) │ +(\S+) │ +(\S+) │", out, flags=re.MULTILINE)}
    # case-insensitive; timm/seresnet18 and tv/resnet34 do not match, the CIFAR family is left out by the pattern
    assert list(rows) == ["timm/resnet18", "tv/resnet18"]  # the families in the registry's order
    for name, (size, params, macs) in rows.items():
        # ResNet-18 with a 10-class head: 11.18 M parameters, 1.82 GMACs at 224x224
        assert (size, params) == ("224x224", "11.18") and 1800 < float(macs) < 1830, (name, macs)
    assert "plus " not in out  # both families were listed


# ------------------------------------------------------------------ 4. report


def test_report_of_a_folder_with_a_run_and_an_export(monkeypatch, capsys, tmp_path, export_dir):
    root = tmp_path / "results"
    code, _, err = run_cli(monkeypatch, capsys, "train", "-c", str(tiny_recipe(tmp_path)), "--model", "resnet8",
                           "-o", str(root / "runs" / "tiny"))
    assert code == 0, err
    shutil.copytree(export_dir, root / "exports" / export_dir.name)
    html_path = tmp_path / "report.html"
    code, out, err = run_cli(monkeypatch, capsys, "report", str(root), "-o", str(html_path))
    assert code == 0, err
    assert "wrote" in out and html_path.name in out
    html = html_path.read_text()
    summary = json.loads((root / "runs" / "tiny" / "summary.json").read_text())
    manifest = json.loads((export_dir / "manifest.json").read_text())
    assert "<title>edgekd report: results</title>" in html
    assert "runs/tiny" in html and f"exports/{export_dir.name}" in html
    assert f"{100 * summary['best_acc']:.2f}%: ce (runs/tiny)" in html  # the summary's best run
    for key, artifact in manifest["artifacts"].items():
        assert f"<td>{key}</td>" in html and f"{100 * artifact['accuracy']:.2f}%" in html
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 2  # training curves and accuracy per method; no bench.json, so no latency plots
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert "No bench reports (bench.json) found." in html


# ------------------------------------------------------------------ 5. prune --target-macs --recover-epochs


def test_prune_to_half_the_macs_and_recover_for_one_epoch(monkeypatch, capsys, tmp_path, digits_run_dir):
    from torch import nn

    from edgekd.rundir import load_model

    out = tmp_path / "pruned"
    code, stdout, err = run_cli(monkeypatch, capsys, "prune", str(digits_run_dir), "-o", str(out),
                                "--target-macs", "0.5", "--channel-multiple", "8", "--recover-epochs", "1",
                                "--device", "cpu")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    ratio = summary["macs_after"] / summary["macs_before"]
    # multiples of 8 channels round the cut: at most the target, and not far below it
    assert 0.35 < ratio <= 0.5, ratio
    assert summary["params_after"] < summary["params_before"]
    assert summary["pruning"] == {"target_macs": 0.5, "method": "structured", "channel_multiple": 8,
                                  "source": str(digits_run_dir)}
    assert summary["acc_before"] > 0.85 and summary["acc_recovered"] == summary["final_acc"]
    assert summary["acc_recovered"] > summary["acc_pruned"], summary  # one epoch of KD wins accuracy back
    assert (summary["method"], summary["epochs"], summary["teacher"]) == ("kd", 1, str(digits_run_dir))
    assert len(read_lines(out / "metrics.jsonl")) == 1
    recovered, _ = load_model(out)
    assert all(m.out_channels % 8 == 0 for m in recovered.modules() if isinstance(m, nn.Conv2d))
    assert sum(p.numel() for p in recovered.parameters()) == summary["params_after"]
    assert json.loads((out / "pruned" / "model.json").read_text())["pruned"]["target_macs"] == 0.5
    table = " ".join(stdout.split())
    assert "recovered (kd, 1 ep)" in table and f"{summary['acc_recovered']:.4f}" in table


# ------------------------------------------------------------------ 6. bench --remote --ssh-port --identity
# --remote-python


def test_bench_remote_writes_local_and_remote_rows(monkeypatch, capsys, tmp_path, export_dir, sshd):
    from functools import partial

    from edgekd.export import remote

    # the CLI has no flag for ssh -o options (a user's ~/.ssh/config holds them): the fixture's pin its host key
    monkeypatch.setattr(remote, "run_remote", partial(remote.run_remote, ssh_options=sshd["ssh_options"]))
    out = tmp_path / "bench"
    code, stdout, err = run_cli(
        monkeypatch, capsys, "bench", str(export_dir), "--runtimes", "ort", "--precisions", "fp32,int8",
        "--warmup", "1", "--iters", "3", "-o", str(out), "--remote", sshd["dest"], "--ssh-port", str(sshd["port"]),
        "--identity", str(sshd["identity"]), "--remote-python", sys.executable)
    assert code == 0, err
    rows = json.loads((out / "bench.json").read_text())["rows"]
    where = [(r["machine"].get("target"), r["runtime"], r["precision"], r["status"], r["iters"]) for r in rows]
    assert where == [(None, "ort", p, "ok", 3) for p in ("fp32", "int8")] + [
        (sshd["dest"], "ort", p, "ok", 3) for p in ("fp32", "int8")]
    assert all(r["p50_ms"] > 0 for r in rows)
    assert test_remote.remote_dirs(sshd) == []  # the copy on the device was removed
    md = (out / "bench.md").read_text()
    assert f"| {sshd['dest']} | ONNX Runtime INT8 |" in md and (out / "bench.png").stat().st_size > 0
    assert f"benchmarking on {sshd['dest']}" in stdout
