"""The export format and runtime registries: what each entry declares, and that a new format with its runtime is one
class each, which export, verification, bench and serve then use without any other change."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgekd.contracts.manifest import PRECISIONS, load_manifest
from edgekd.errors import EdgeKDError
from edgekd.export.formats import FORMATS, ExportFormat, artifact_kinds, register_format
from edgekd.runtimes import RUNTIMES, artifact_runtimes, open_artifact, register_runtime, runtime_of, select_artifact
from edgekd.runtimes.openvino import OpenVINORuntime
from edgekd.runtimes.ort import OrtRuntime


def test_every_format_names_a_runtime_that_runs_it() -> None:
    assert {"onnx", "openvino"} <= set(FORMATS)  # the shipped ones; a format registered later needs no edit here
    for key, fmt in FORMATS.items():
        assert fmt.files["fp32"] and set(fmt.files) <= set(PRECISIONS), key
        assert fmt.runtime in RUNTIMES and key in RUNTIMES[fmt.runtime].formats and runtime_of(key) == fmt.runtime
    assert artifact_kinds() == {f"{key}-{p}": (key, p) for key, fmt in FORMATS.items() for p in fmt.files}
    assert {"onnx-int8", "openvino-fp16", "openvino-int8"} <= set(artifact_kinds())


def test_every_runtime_declares_itself() -> None:
    assert {"ort", "openvino", "torch"} <= set(RUNTIMES)
    assert artifact_runtimes() == [name for name, cls in RUNTIMES.items() if cls.formats]
    assert not RUNTIMES["torch"].formats and RUNTIMES["torch"].source_run
    for name, cls in RUNTIMES.items():
        assert cls.name == name and cls.title and cls.package
        assert bool(cls.formats) != cls.source_run, name  # an artifact runtime, or the source-run baseline
    assert RUNTIMES["ort"].installed_version() and RUNTIMES["openvino"].installed_version()
    with pytest.raises(ValueError, match="registered twice"):
        register_runtime(type("Other", (OrtRuntime,), {"name": "ort"}))


def test_a_runtime_can_declare_another_runtimes_format(export_dir: Path) -> None:
    """OpenVINO reads ONNX files too: a runtime that says so runs the ONNX artifacts, and only when named."""

    class OpenVINOOnnx(OpenVINORuntime):
        name = "openvino-onnx"
        formats = ("onnx",)

    manifest = load_manifest(export_dir)
    register_runtime(OpenVINOOnnx)
    try:
        assert select_artifact(manifest, runtime="openvino-onnx") == "onnx-int8"
        assert select_artifact(manifest) == "onnx-int8" and runtime_of("onnx") == "ort"  # ORT stays the default
        x = np.random.default_rng(0).standard_normal((4, 3, 32, 32), dtype=np.float32)
        ov_logits = open_artifact(export_dir, manifest, "onnx-fp32", runtime="openvino-onnx", hint="THROUGHPUT").run(x)
        ort_logits = open_artifact(export_dir, manifest, "onnx-fp32", spin=False).run(x)
        np.testing.assert_allclose(ov_logits, ort_logits, atol=1e-3)
        with pytest.raises(EdgeKDError, match="is openvino, which openvino-onnx does not run"):
            open_artifact(export_dir, manifest, "openvino-fp32", runtime="openvino-onnx")
    finally:
        RUNTIMES.pop("openvino-onnx")


# A format and its runtime, as a contributor would add them: ONNX Runtime's offline-optimized graph.


class OrtOptimizedRuntime(OrtRuntime):
    name = "ort-optimized"
    title = "ONNX Runtime (optimized graph)"
    formats = ("ort-optimized",)


class OrtOptimizedFormat(ExportFormat):
    key = "ort-optimized"
    title = "ONNX, optimized offline by ONNX Runtime"
    runtime = "ort-optimized"
    files = {"fp32": ["model.optimized.onnx"]}

    def write(self, precision: str, job) -> dict:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(self.paths(precision, job.out)[0])
        with job.stage("ONNX Runtime graph optimization"):
            ort.InferenceSession(str(job.graph()), opts, providers=["CPUExecutionProvider"])
        return {"optimization": "basic"}


@pytest.fixture
def ort_optimized():
    register_format(OrtOptimizedFormat)
    register_runtime(OrtOptimizedRuntime)
    try:
        yield
    finally:
        FORMATS.pop(OrtOptimizedFormat.key)
        RUNTIMES.pop(OrtOptimizedRuntime.name)


@pytest.mark.slow
def test_a_new_format_and_runtime_work_in_every_stage(ort_optimized, digits_run_dir: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from edgekd.export import export_run
    from edgekd.export.bench import run_bench
    from edgekd.serve.app import create_app

    out = tmp_path / "exp"
    manifest = export_run(digits_run_dir, out, formats=("ort-optimized",), progress=False)
    entry = manifest["artifacts"]["ort-optimized-fp32"]
    assert list(manifest["artifacts"]) == ["ort-optimized-fp32"] and entry["optimization"] == "basic"
    assert entry["agreement"] == 1.0 and entry["max_abs_diff"] < 1e-4 and entry["files"] == ["model.optimized.onnx"]
    assert not (out / "model.onnx").exists()  # the graph it descends from stayed in scratch space

    rows = run_bench(out, precisions=("fp32",), warmup=0, iters=3, progress=False)
    assert [(r["runtime"], r["status"]) for r in rows] == [
        ("ort", "skipped: no ort fp32 artifact in this export"),
        ("openvino", "skipped: no openvino fp32 artifact in this export"),
        ("torch", "ok"),
        ("ort-optimized", "ok"),
    ]

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (20, 200, 20)).save(buf, "PNG")
    with TestClient(create_app(out, runtime="ort-optimized")) as client:
        r = client.post("/predict", files={"file": ("x.png", buf.getvalue(), "image/png")})
        assert r.status_code == 200 and len(r.json()["predictions"]) == 5
        meta = client.get(f"/v2/models/{manifest['model']}").json()
        assert meta["versions"] == ["ort-optimized-fp32"] and meta["platform"] == OrtOptimizedRuntime.platform
    with pytest.raises(EdgeKDError, match="unknown export format|no export format given"):
        export_run(digits_run_dir, tmp_path / "none", formats=("tflite",), progress=False)


# A dataset source, a model and a method, as a contributor would add them (README, "Extending edgekd"), trained.


def _stripes(path: str, image_size, options: dict):
    from edgekd.data import ArrayImages, DataBundle, channel_stats, no_options, no_path

    no_path("test-stripes", path)
    no_options("test-stripes", options)
    rng = np.random.default_rng(0)
    labels = np.arange(64) % 2
    images = (rng.uniform(0, 60, (64, 8, 8, 3)) + 150 * labels[:, None, None, None] * (np.arange(8) % 2)[:, None, None])
    images = images.astype(np.uint8)
    train, val = ArrayImages(images[:48], labels[:48]), ArrayImages(images[48:], labels[48:])
    size = image_size or 8
    mean, std = channel_stats(train, (size, size))
    return DataBundle("test-stripes", "test-stripes", {}, 2, ["flat", "striped"], (3, size, size), mean, std, train,
                      val, hflip=False)


@pytest.fixture
def contributed():
    import torch

    from edgekd.data import DATASETS, DatasetSource, register_dataset
    from edgekd.methods.base import METHODS, Method, register_method
    from edgekd.models.registry import MODELS, register_model

    register_dataset(DatasetSource("test-stripes", "test-stripes", "stripes or not", "2", "3x8x8", "none",
                                   _stripes))
    register_model("test-mlp", input_size=(3, 8, 8))(
        lambda num_classes: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(num_classes)))

    @register_method("test-logit-penalty")
    class LogitPenalty(Method):
        """Cross-entropy plus a penalty on the logits' size (a method needs nothing more)."""

        defaults = {"beta": 0.01}

        def forward_train(self, x, y, epoch):
            logits = self.student(x)
            return logits, {"ce": torch.nn.functional.cross_entropy(logits, y),
                            "penalty": self.args["beta"] * logits.pow(2).mean()}

    try:
        yield
    finally:
        DATASETS.unregister("test-stripes")
        MODELS.unregister("test-mlp")
        METHODS.unregister("test-logit-penalty")


def test_a_contributed_dataset_model_and_method_train_as_registered_ones_do(tmp_path, contributed):
    import json

    from edgekd.config import load_config
    from edgekd.data import list_datasets
    from edgekd.models import list_models
    from edgekd.train import run_training

    assert "test-stripes" in [row["name"] for row in list_datasets()] and "test-mlp" in list_models()
    cfg = load_config(overrides={"data": "test-stripes", "model": "test-mlp", "method": "test-logit-penalty",
                                 "method_args": {"beta": 0.1}, "epochs": 3, "batch_size": 16, "lr": 0.1,
                                 "device": "cpu", "out": str(tmp_path / "run")})
    summary = run_training(cfg, show_progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert set(rows[0]["losses"]) == {"ce", "penalty"} and summary["method"] == "test-logit-penalty"
    assert summary["final_acc"] > 0.9  # the stripes are learnt
    desc = json.loads((tmp_path / "run" / "model.json").read_text())
    assert desc["arch"] == "test-mlp" and desc["dataset"] == "test-stripes" and desc["input_size"] == [3, 8, 8]
    with pytest.raises(EdgeKDError, match="did you mean test-logit-penalty"):
        load_config(overrides={"method": "test-logit-penalty2"})


def _edgekd_modules(registry) -> dict[str, str]:
    """The registered names (folded) of edgekd's own entries, outside the timm/torchvision families, by module."""
    return {key: getattr(entry, "build", entry).__module__ for key, entry in registry.items()
            if getattr(entry, "build", entry).__module__.startswith("edgekd.") and "/" not in key}


@pytest.mark.parametrize("name", ["METHODS", "MODELS", "DATASETS"])
def test_the_entry_points_declare_exactly_what_their_modules_register(name) -> None:
    from importlib.metadata import entry_points

    import edgekd.registries

    registry = getattr(edgekd.registries, name)
    registry.names()
    declared = {registry._key(ep.name): ep.value for ep in entry_points(group=registry.group)}
    assert {k: v for k, v in declared.items() if not k.endswith("/")} == _edgekd_modules(registry)
    if name == "MODELS":
        assert {k for k in declared if k.endswith("/")} == {"tv/", "timm/"}
        assert any(k.startswith("timm/") for k in registry) and any(k.startswith("tv/") for k in registry)


def test_a_mistyped_name_is_one_line_before_torch_loads(digits_run_dir: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    script = """
import sys
from edgekd.config import load_config
from edgekd.errors import EdgeKDError
from edgekd.export import export_run
from edgekd.recover import prune
for key, value in (("method", "drdk"), ("model", "resnt8"), ("teacher_arch", "wrn_40_3"), ("data", "cifar101:x")):
    try:
        load_config(overrides={key: value})
    except EdgeKDError as e:
        print(e)
for call in (lambda: prune(RUN, OUT, recover_epochs=1, recover_method="dkt"),
             lambda: export_run(RUN, OUT, formats=("onx",))):
    try:
        call()
    except EdgeKDError as e:
        print(e)
assert "torch" not in sys.modules, "torch loaded"
"""
    script = f"RUN, OUT = {str(digits_run_dir)!r}, {str(tmp_path / 'out')!r}\n" + script
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == [
        "unknown method 'drdk' (did you mean drkd?); run `edgekd methods` for what each does",
        "unknown model 'resnt8' (did you mean resnet8, resnet8x4, resnet56?); run `edgekd models` to list the "
        "available names",
        "unknown model 'wrn_40_3' (did you mean wrn_40_2, wrn_40_1, wrn_16_2?); run `edgekd models` to list the "
        "available names",
        "unknown dataset 'cifar101' (did you mean cifar10, cifar100?); run `edgekd datasets` for each one's layout",
        "unknown method 'dkt' (did you mean dkd?); run `edgekd methods` for what each does",
        "unknown export format 'onx' (did you mean onnx?)",
    ]
    assert not (tmp_path / "out").exists()


def test_an_installed_plugin_package_adds_a_method(tmp_path) -> None:
    """A package that declares an ``edgekd.methods`` entry point is found without any edit to edgekd."""
    import os
    import subprocess
    import sys

    site = tmp_path / "site"
    (site / "plugkd-0.1.dist-info").mkdir(parents=True)
    (site / "plugkd-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: plugkd\nVersion: 0.1\n")
    (site / "plugkd-0.1.dist-info" / "entry_points.txt").write_text("[edgekd.methods]\nplug-kd = plugkd\n")
    (site / "plugkd.py").write_text(
        "from edgekd.methods.kd import KD\nfrom edgekd.methods.base import register_method\n\n"
        "@register_method('plug-kd')\nclass PlugKD(KD):\n    defaults = {**KD.defaults, 'T': 2.0}\n")
    script = """
from edgekd.config import load_config
from edgekd.methods import list_methods, method_class
cfg = load_config(overrides={"method": "plug-kd", "teacher": "somewhere"})
print(cfg.method, method_class("plug-kd").defaults, "plug-kd" in list_methods())
"""
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "plug-kd {'alpha': 0.9, 'T': 2.0, 'logit_std': False} True"


def test_a_registry_whose_entry_points_are_missing_says_to_install_edgekd() -> None:
    from edgekd.contracts.registry import Registry

    with pytest.raises(EdgeKDError, match=r"the edgekd.nothing entry points are missing, so edgekd is not installed"):
        Registry("thing", group="edgekd.nothing").check("anything")
