"""The exported ONNX models give the same top-1 on aarch64 as on x86, checked under qemu-user emulation.

The aarch64 side is Debian's arm64 Python running the manylinux aarch64 wheels of onnxruntime and numpy (the
releases uv.lock pins), prepared outside the repo by ``.ci/arm64-root.sh``; ``tests/arm64_runner.py`` is all it
runs. Without that preparation the test is skipped, unless ``EDGEKD_ARM64=1`` (CI sets it after running the
script), where a missing root is a failure. Emulated seconds are reported with ``emulated: true`` only: qemu says
nothing about the speed of a real ARM board.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgekd.contracts.manifest import load_manifest

ARM64_CACHE = Path(os.environ.get("EDGEKD_ARM64_CACHE") or Path.home() / ".cache" / "edgekd" / "arm64")
RUNNER = Path(__file__).with_name("arm64_runner.py")
ARTIFACTS = ("onnx-fp32", "onnx-int8")
SAMPLES = 64
THREADS = 1  # both sides; one thread keeps the emulated run light on a shared 2-core machine

LAUNCHER = ARM64_CACHE / "python"
PREPARED = (ARM64_CACHE / "ready.json").is_file() and LAUNCHER.is_file()
MISSING = f"no emulated aarch64 Python in {ARM64_CACHE}; prepare it with `bash .ci/arm64-root.sh`"
REQUIRED = os.environ.get("EDGEKD_ARM64") == "1"

# Uses the session's export fixture; as the first test file in name order it may pay for building it too.
# The skip is a mark, not a fixture, so that skipping never builds that fixture.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(600),
    pytest.mark.skipif(not PREPARED and not REQUIRED, reason=f"{MISSING}, or set EDGEKD_ARM64=1 to require it"),
]


@dataclass
class Agreement:
    x86: dict[str, np.ndarray]
    arm64: dict[str, np.ndarray]
    labels: np.ndarray
    info: dict


@pytest.fixture(scope="session")
def arm64_python() -> Path:
    """The launcher ``.ci/arm64-root.sh`` writes; session-scoped so a missing one fails before the export is built."""
    if not PREPARED:
        pytest.fail(f"{MISSING} (EDGEKD_ARM64=1 says it was prepared)")
    return LAUNCHER


def held_out_batch(manifest: dict) -> tuple[np.ndarray, np.ndarray]:
    """The first ``SAMPLES`` held-out images, preprocessed as at evaluation, and their labels."""
    from edgekd.data import build_data

    spec = manifest["eval"]
    size = int(manifest["input"]["shape"][-1])  # the exporter evaluates at the model's input size
    val = build_data(spec["dataset"], image_size=size, options=spec.get("options") or {}).val_set()
    items = [val[i] for i in range(min(SAMPLES, len(val)))]
    batch = np.stack([np.asarray(x, dtype=np.float32) for x, _ in items])
    return batch, np.array([y for _, y in items])


def x86_logits(path: Path, batch: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


@pytest.fixture(scope="module")
def agreement(arm64_python: Path, export_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Agreement:
    """Logits of both ONNX artifacts on one held-out batch, from x86 onnxruntime and from the emulated aarch64 one."""
    manifest = load_manifest(export_dir)
    models = {key: Path(export_dir) / manifest["artifacts"][key]["files"][0] for key in ARTIFACTS}
    batch, labels = held_out_batch(manifest)
    work = tmp_path_factory.mktemp("arm64")
    np.save(work / "batch.npy", batch)
    command = [str(arm64_python), str(RUNNER), "--input", str(work / "batch.npy"), "--out", str(work / "out"),
               "--threads", str(THREADS), *(f"{key}={path}" for key, path in models.items())]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"emulated aarch64 runner failed ({run.returncode}):\n{run.stderr[-3000:]}"
    return Agreement(
        x86={key: x86_logits(path, batch) for key, path in models.items()},
        arm64={key: np.load(work / "out" / f"{key}.npy") for key in ARTIFACTS},
        labels=labels,
        info=json.loads((work / "out" / "info.json").read_text()),
    )


def test_runner_ran_on_emulated_aarch64(agreement: Agreement) -> None:
    info = agreement.info
    assert info["machine"] == "aarch64"
    assert info["emulated"] is True and info["emulator"].startswith("qemu-user")
    assert info["onnxruntime"] == ort.__version__, "both sides must run the same onnxruntime release"
    assert info["batch"] == len(agreement.labels) > 0


@pytest.mark.parametrize("key", ARTIFACTS)
def test_same_top1_on_aarch64_as_on_x86(agreement: Agreement, key: str, record_property) -> None:
    x86, arm64 = agreement.x86[key], agreement.arm64[key]
    assert arm64.shape == x86.shape == (len(agreement.labels), x86.shape[1])
    top1_x86, top1_arm64 = x86.argmax(1), arm64.argmax(1)
    max_diff = float(np.abs(arm64 - x86).max())
    record_property("max_abs_logit_diff", max_diff)
    record_property("emulated_seconds", agreement.info["seconds"][key])
    print(f"{key}: {len(x86)} held-out samples, top-1 agreement {np.mean(top1_x86 == top1_arm64):.3f}, "
          f"max |logit diff| {max_diff:.3g}, x86 accuracy {np.mean(top1_x86 == agreement.labels):.3f}; "
          f"aarch64 run {agreement.info['seconds'][key]:.2f} s (emulated: true, not device latency)")
    # A model that predicts one class everywhere would agree trivially.
    assert len(np.unique(top1_x86)) > 1, f"{key} predicts a single class on the held-out batch"
    np.testing.assert_array_equal(top1_arm64, top1_x86, err_msg=f"{key}: top-1 differs between aarch64 and x86")
    if key == "onnx-fp32":
        # Same graph, same float32 weights: only the kernels' summation order differs between the two CPUs.
        np.testing.assert_allclose(arm64, x86, rtol=1e-3, atol=1e-3 * max(1.0, float(np.abs(x86).max())))
