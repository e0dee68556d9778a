"""Shared fixtures: one small trained run dir and its full export, built once per test session.

The run is a resnet8 trained on scikit-learn's digits with a plain torch loop (no edgekd trainer), so tests
of later stages (export, bench, serve) do not depend on the training code they are not testing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import edgekd.cli  # noqa: F401  (its console reads COLUMNS once, when imported: before any test sets it)

DIGITS_EPOCHS = 4


def train_digits_run(run_dir: Path, arch: str = "resnet8", epochs: int = DIGITS_EPOCHS, seed: int = 0) -> Path:
    """Train ``arch`` on digits (CE, SGD momentum 0.9, one-cycle lr up to 0.05, batch 64) and save a run dir.

    The one-cycle schedule ends at a tiny lr, so the few epochs land on a stable > 85 % model; one thread,
    because on a shared 2-core machine two contending threads are several times slower than one.
    """
    import torch
    from torch.nn import functional as F

    from edgekd.data import build_data, make_loader
    from edgekd.models import create_model
    from edgekd.rundir import model_description, save_model

    torch.manual_seed(seed)
    bundle = build_data("digits")
    # Calibration-style (un-augmented) training images, decoded once: the loop then costs only the model.
    xs, ys = zip(*(bundle.calib_set()[i] for i in range(len(bundle.raw_train))))
    images, labels = torch.stack(xs), torch.tensor(ys)
    model = create_model(arch, bundle.num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    order = make_loader(list(range(len(labels))), 64, shuffle=True, seed=seed)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 0.05, total_steps=epochs * len(order), pct_start=0.15)
    with single_torch_thread():
        model.train()
        for _ in range(epochs):
            for idx in order:
                loss = F.cross_entropy(model(images[idx]), labels[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
    model.eval()
    save_model(run_dir, model, model_description(arch, bundle))
    return run_dir


@pytest.fixture(scope="session")
def digits_run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained resnet8 digits run dir (model.safetensors + model.json), > 85 % held-out accuracy."""
    return train_digits_run(tmp_path_factory.mktemp("runs") / "digits-resnet8")


@pytest.fixture(scope="session")
def export_dir(digits_run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The export dir of ``digits_run_dir``: ONNX and OpenVINO, FP32 and INT8, verified, with manifest.json."""
    from edgekd.export import export_run

    out = tmp_path_factory.mktemp("exports") / "digits-resnet8"
    export_run(digits_run_dir, out, formats=("onnx", "openvino"), int8=True, progress=False)
    return out


def pytest_runtest_logstart(nodeid: str, location: tuple) -> None:
    """Name the running test in ``$EDGEKD_TEST_TRACE`` (``.ci/run`` sets it): a process killed by a signal prints
    nothing, so CI reads there which test was running."""
    trace = os.environ.get("EDGEKD_TEST_TRACE")
    if trace:
        Path(trace).write_text(nodeid + "\n")


@pytest.fixture(autouse=True)
def no_leaked_sigchld_handler() -> Iterator[None]:
    """Each test leaves SIGCHLD as it found it.

    The first DataLoader with worker processes in this process installs torch's SIGCHLD handler for good; every
    later child that exits (servers, CLI subprocesses) then interrupts the test process with it. With that
    handler left in place, the whole suite died silently (SIGSEGV raised by the kernel while delivering a
    signal, exit 139) waiting on a subprocess in its last module; each half of the suite alone passed.
    """
    before = signal.getsignal(signal.SIGCHLD)
    yield
    if signal.getsignal(signal.SIGCHLD) is not before:
        signal.signal(signal.SIGCHLD, before)


def wait_until_ready(proc: subprocess.Popen, url: str, log: Path, timeout_s: float) -> None:
    """Poll a server subprocess's /v2/health/ready; fail with its log if it dies or stays unready."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """``edgekd ARGS`` in this process: its exit code, stdout and stderr."""
    import sys

    from edgekd.cli import main

    monkeypatch.setattr(sys, "argv", ["edgekd", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    out, err = capsys.readouterr()
    return exc.value.code, out, err


@contextlib.contextmanager
def single_torch_thread() -> Iterator[None]:
    """Small models and batches: extra intra-op threads only spin-wait, which costs several times on a shared CPU."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """For modules of tiny tensors: ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    with single_torch_thread():
        yield

