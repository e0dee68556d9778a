"""edgekd export: artifacts that load without edgekd, agree with PyTorch, and a manifest that tells the truth."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from edgekd.contracts.manifest import load_manifest, sha256_file
from edgekd.errors import EdgeKDError
from edgekd.export.formats import artifact_kinds

pytestmark = pytest.mark.slow
ALL = {"onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-int8"}


@pytest.fixture(scope="module")
def manifest(export_dir: Path) -> dict:
    return load_manifest(export_dir)


@pytest.fixture(scope="module")
def val_data(manifest: dict) -> tuple[np.ndarray, np.ndarray]:
    from edgekd.data import build_data

    bundle = build_data(manifest["eval"]["dataset"], options=manifest["eval"]["options"])
    xs, ys = zip(*(bundle.val_set()[i] for i in range(len(bundle.raw_val))))
    return np.stack([x.numpy() for x in xs]), np.asarray(ys)


@pytest.fixture(scope="module")
def torch_logits(digits_run_dir: Path, val_data) -> np.ndarray:
    import torch

    from edgekd.rundir import load_model

    model, _ = load_model(digits_run_dir)
    with torch.inference_mode():
        return model(torch.from_numpy(val_data[0])).numpy()


def _plain_runner(export_dir: Path, key: str, entry: dict):
    """Run an artifact with the bare runtime APIs, as a user without edgekd would."""
    path = str(export_dir / entry["files"][0])
    if entry["format"] == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return lambda x: session.run(["logits"], {"input": x})[0]
    import openvino as ov

    # f32: on CPUs with AMX or AVX-512 BF16, OpenVINO otherwise runs FP32 layers in bf16
    compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return lambda x: np.asarray(compiled(x)[0])


def test_every_artifact_written_and_verified(manifest: dict) -> None:
    assert set(manifest["artifacts"]) == ALL
    assert manifest["dropped"] == {} and manifest["notes"] == []
    assert manifest["eval"]["torch_accuracy"] > 0.85  # the fixture's model is a real classifier
    for key, a in manifest["artifacts"].items():
        assert (a["format"], a["precision"]) == artifact_kinds()[key]
        assert a["agreement"] == 1.0 if a["precision"] == "fp32" else a["agreement"] >= 0.98, key
        assert abs(a["accuracy"] - manifest["eval"]["torch_accuracy"]) <= (0 if a["precision"] == "fp32" else 0.02), key
        assert a["export_seconds"] > 0


def test_manifest_contract(manifest: dict, export_dir: Path, digits_run_dir: Path) -> None:
    assert manifest["format_version"] == 1
    assert manifest["model"] == "resnet8-digits"
    assert manifest["arch"] == "resnet8" and manifest["num_classes"] == 10
    assert manifest["source_run"] == str(digits_run_dir.resolve())
    assert manifest["class_names"] == [str(d) for d in range(10)]
    assert manifest["input"] == {"name": "input", "shape": [None, 3, 32, 32], "dtype": "float32"}
    assert manifest["output"] == {"name": "logits", "shape": [None, 10]}
    pre = manifest["preprocessing"]
    desc = json.loads((digits_run_dir / "model.json").read_text())
    assert pre["resize"] == [32, 32] and pre["mean"] == desc["mean"] and pre["std"] == desc["std"]
    assert (pre["channel_order"], pre["layout"], pre["interpolation"]) == ("RGB", "NCHW", "bilinear")
    assert pre["scale"] == pytest.approx(1 / 255)
    assert manifest["eval"]["split"] == "val" and manifest["eval"]["samples"] == 360
    assert json.loads((export_dir / "manifest.json").read_text()) == manifest


def test_sha256_and_sizes_match_files(manifest: dict, export_dir: Path) -> None:
    listed = set()
    for a in manifest["artifacts"].values():
        assert a["size_bytes"] == sum((export_dir / f).stat().st_size for f in a["files"]) > 0
        for f in a["files"]:
            assert a["sha256"][f] == sha256_file(export_dir / f)
            listed.add(f)
    on_disk = {p.relative_to(export_dir).as_posix() for p in export_dir.rglob("*") if p.is_file()}
    assert on_disk == listed | {"manifest.json"}  # nothing unlisted, no temp files, no external data
    assert manifest["artifacts"]["onnx-int8"]["size_bytes"] < 0.5 * manifest["artifacts"]["onnx-fp32"]["size_bytes"]


@pytest.mark.parametrize("key", sorted(ALL))
def test_round_trip_in_plain_runtimes(key, manifest, export_dir, val_data, torch_logits) -> None:
    images, labels = val_data
    run = _plain_runner(export_dir, key, manifest["artifacts"][key])
    logits = np.concatenate([run(images[i : i + 64]) for i in range(0, len(images), 64)])
    agreement = float((logits.argmax(1) == torch_logits.argmax(1)).mean())
    entry = manifest["artifacts"][key]
    assert agreement == pytest.approx(entry["agreement"])
    assert float((logits.argmax(1) == labels).mean()) == pytest.approx(entry["accuracy"])
    if entry["precision"] == "fp32":
        assert agreement == 1.0
        assert np.abs(logits - torch_logits).max() < 1e-3
    else:
        assert agreement >= 0.98


@pytest.mark.parametrize("key", sorted(ALL))
def test_dynamic_batch(key, manifest, export_dir, val_data) -> None:
    run = _plain_runner(export_dir, key, manifest["artifacts"][key])
    images = val_data[0]
    seven = run(images[:7])
    one = run(images[:1])
    assert seven.shape == (7, 10) and one.shape == (1, 10)
    np.testing.assert_allclose(one[0], seven[0], rtol=1e-4, atol=1e-4)


def test_onnx_metadata(manifest: dict, export_dir: Path) -> None:
    import onnx

    for key in ("onnx-fp32", "onnx-int8"):
        proto = onnx.load(str(export_dir / manifest["artifacts"][key]["files"][0]))
        props = {p.key: p.value for p in proto.metadata_props}
        assert json.loads(props["class_names"]) == manifest["class_names"]
        assert json.loads(props["preprocessing"]) == manifest["preprocessing"]
        assert props["model"] == "resnet8-digits"
        assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
        inp = proto.graph.input[0]
        assert inp.name == "input" and inp.type.tensor_type.shape.dim[0].dim_param
        assert proto.graph.output[0].name == "logits"
    ops = {n.op_type for n in onnx.load(str(export_dir / "model.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_openvino_ir_carries_metadata(manifest: dict, export_dir: Path) -> None:
    import openvino as ov

    model = ov.Core().read_model(str(export_dir / manifest["artifacts"]["openvino-fp32"]["files"][0]))
    assert json.loads(model.get_rt_info(["edgekd", "class_names"]).astype(str)) == manifest["class_names"]


def test_table_rows(manifest: dict) -> None:
    from edgekd.export import manifest_table_rows

    rows = manifest_table_rows(manifest)
    assert [r["format"] for r in rows] == ["pytorch", *manifest["artifacts"]]
    assert all(r["status"] == "ok" for r in rows[1:])
    assert rows[1]["top-1"] == f"{manifest['artifacts'][rows[1]['format']]['accuracy']:.4f}"


def test_package_import_is_torch_free() -> None:
    code = "import sys, edgekd.export; edgekd.export.manifest_table_rows; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def _no_export_left(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def test_scratch_space_lives_in_the_folder_being_built(tmp_path: Path, digits_run_dir: Path, monkeypatch) -> None:
    """A killed export leaves nothing in /tmp: its scratch is inside the partial folder the next export removes."""
    import tempfile

    from edgekd.export import export_run, exporter

    monkeypatch.setenv("TMPDIR", str(tmp_path / "system-tmp"))
    (tmp_path / "system-tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    seen = []
    real_graph = exporter.ExportJob.graph

    def graph(self, path=None):
        seen.append(self.scratch)
        return real_graph(self, path)

    monkeypatch.setattr(exporter.ExportJob, "graph", graph)
    out = tmp_path / "exports" / "exp"
    manifest = export_run(digits_run_dir, out, formats=("openvino",), progress=False)
    assert seen and all(s.parent.parent == out.parent and s.parent.name.startswith(".exp.") for s in seen)
    assert list((tmp_path / "system-tmp").iterdir()) == []
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "openvino-fp32"]
    assert manifest["artifacts"]["openvino-fp32"]["agreement"] == 1.0


def test_missing_run_dir(tmp_path: Path) -> None:
    from edgekd.export import export_run

    out = tmp_path / "exp"
    with pytest.raises(EdgeKDError, match="does not exist"):
        export_run(tmp_path / "nope", out, progress=False)
    _no_export_left(out)


def test_corrupt_weights(tmp_path: Path, digits_run_dir: Path) -> None:
    from edgekd.export import export_run

    run = tmp_path / "run"
    run.mkdir()
    (run / "model.json").write_text((digits_run_dir / "model.json").read_text())
    (run / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    out = tmp_path / "exp"
    with pytest.raises(EdgeKDError, match="corrupt"):
        export_run(run, out, progress=False)
    _no_export_left(out)


@pytest.mark.parametrize("formats", [("tflite",), ("onnx", "coreml"), ()])
def test_unsupported_format(tmp_path: Path, digits_run_dir: Path, formats) -> None:
    from edgekd.export import export_run

    out = tmp_path / "exp"
    with pytest.raises(EdgeKDError, match="unknown export format|no export format given"):
        export_run(digits_run_dir, out, formats=formats, progress=False)
    _no_export_left(out)


def test_failure_midway_leaves_nothing(tmp_path: Path, digits_run_dir: Path, monkeypatch) -> None:
    from edgekd.export import export_run
    from edgekd.export.formats import openvino as openvino_export

    def broken(*args, **kwargs):
        raise RuntimeError("converter exploded\nsecond line")

    monkeypatch.setattr(openvino_export, "read_onnx", broken)
    out = tmp_path / "exp"
    with pytest.raises(EdgeKDError, match="^OpenVINO conversion failed: RuntimeError: converter exploded$"):
        export_run(digits_run_dir, out, progress=False)
    _no_export_left(out)


def test_existing_export_dir_is_not_clobbered(export_dir: Path, digits_run_dir: Path) -> None:
    from edgekd.export import export_run

    before = (export_dir / "manifest.json").read_bytes()
    with pytest.raises(EdgeKDError, match="already exists"):
        export_run(digits_run_dir, export_dir, progress=False)
    assert (export_dir / "manifest.json").read_bytes() == before


def test_int8_past_max_drop_is_dropped_and_fp32_kept(tmp_path: Path, digits_run_dir: Path, monkeypatch, capsys) -> None:
    from edgekd.export import export_run, exporter, manifest_table_rows

    real_verify = exporter.verify_file

    def int8_loses_five_points(path, fmt, *args):  # whatever the quantizer achieves, INT8 now misses max_drop
        scores = real_verify(path, fmt, *args)
        int8 = "int8" in f"{Path(path).parent.name}/{Path(path).name}"  # model.int8.onnx, openvino-int8/model.xml
        return {**scores, "accuracy": scores["accuracy"] - 0.05} if int8 else scores

    monkeypatch.setattr(exporter, "verify_file", int8_loses_five_points)
    monkeypatch.setattr(exporter, "MORE_CALIB", 256)  # the search's "more images" step, smaller: the same path, quicker
    out = tmp_path / "exp"
    manifest = export_run(digits_run_dir, out, int8=True, calib_samples=64, max_drop=1, progress=False)
    assert set(manifest["artifacts"]) == {"onnx-fp32", "openvino-fp32"}
    assert set(manifest["dropped"]) == {"onnx-int8", "openvino-int8"}
    assert manifest["dropped"]["openvino-int8"]["quantization"]["accuracy_control"] is True
    for dropped in manifest["dropped"].values():
        assert "max_drop 1" in dropped["reason"]
        assert dropped["accuracy"] > 0.85 and "files" not in dropped
    # ONNX Runtime tried its remedies, fastest first, and says so: every calibration, more images, FP32 layers
    search = manifest["dropped"]["onnx-int8"]["quantization"]["search"]
    assert [(t["calibration"], t["samples"]) for t in search] == [
        ("minmax", 64), ("entropy", 64), ("percentile", 64), ("percentile", 256),
        (search[-1]["calibration"], search[-1]["samples"])]
    assert [len(t["fp32_nodes"]) for t in search] == [0, 0, 0, 0, 2] and all(t["drop_points"] > 1 for t in search)
    assert "tried minmax (64 images): " in manifest["dropped"]["onnx-int8"]["reason"]
    assert "2 layers FP32" in manifest["dropped"]["onnx-int8"]["reason"]
    assert len(manifest["notes"]) == 2 and all("not written" in n for n in manifest["notes"])
    assert not (out / "model.int8.onnx").exists() and not (out / "openvino-int8").exists()
    assert load_manifest(out)["artifacts"].keys() == {"onnx-fp32", "openvino-fp32"}
    statuses = [r["status"].split(":")[0] for r in manifest_table_rows(manifest)]
    assert statuses == ["reference", "ok", "ok", "dropped", "dropped"]
    # the terminal table: whole numbers in 80 columns, the dropped artifacts marked, each reason in full below it
    from edgekd import cli

    monkeypatch.setenv("COLUMNS", "80")
    cli._print_export(manifest_table_rows(manifest), f"export of {digits_run_dir} -> {out}")
    text = capsys.readouterr().out
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80, text
    assert [line.split()[0] for line in text.splitlines() if "❎" in line] == ["onnx-int8", "openvino-int8", "❎", "❎"]
    for key, dropped in manifest["dropped"].items():
        assert f"❎ {key}: dropped: {dropped['reason']}" in " ".join(text.split())


def test_default_int8_export_keeps_no_artifact_over_half_a_point(manifest: dict) -> None:
    """The fixture is a weakly trained digits resnet8 (4 epochs) exported with the defaults: --int8 alone."""
    torch_acc = manifest["eval"]["torch_accuracy"]
    int8 = {k: a for k, a in {**manifest["artifacts"], **manifest["dropped"]}.items() if a["precision"] == "int8"}
    assert set(int8) == {"onnx-int8", "openvino-int8"}
    for key, a in manifest["artifacts"].items():
        if a["precision"] == "int8":
            assert (torch_acc - a["accuracy"]) * 100 <= 0.5 + 1e-9, key
    onnx = int8["onnx-int8"]["quantization"]
    assert onnx["search"] and onnx["search"][0] == {**onnx["search"][0], "calibration": "minmax", "samples": 300}
    assert onnx["calibration"]["method"] == onnx["search"][-1]["calibration"]
    assert int8["openvino-int8"]["quantization"]["accuracy_control"] is True


def test_int8_search_keeps_the_first_calibration_that_meets_max_drop(tmp_path: Path, digits_run_dir: Path,
                                                                     monkeypatch) -> None:
    from edgekd.export import export_run, exporter
    from edgekd.export.formats.onnx import OnnxFormat

    real_verify, real_quantize, methods = exporter.verify_file, OnnxFormat._quantize, []

    def record(self, job, path, attempt):
        methods.append(attempt.method)
        return real_quantize(self, job, path, attempt)

    def minmax_loses_two_points(path, fmt, *args):  # and entropy loses nothing, so the search stops there
        scores = real_verify(path, fmt, *args)
        if "int8" not in Path(path).name:
            return scores
        return {**scores, "accuracy": scores["accuracy"] - 0.02 if methods[-1] == "minmax" else 1.0}

    monkeypatch.setattr(OnnxFormat, "_quantize", record)
    monkeypatch.setattr(exporter, "verify_file", minmax_loses_two_points)
    manifest = export_run(digits_run_dir, tmp_path / "exp", formats=("onnx",), int8=True, calib_samples=64,
                          progress=False)
    int8 = manifest["artifacts"]["onnx-int8"]
    search = int8["quantization"]["search"]
    # the asked-for calibration first, then the others in the designed order, stopping at the first that meets it
    assert methods == ["minmax", "entropy"] == [t["calibration"] for t in search]
    assert int8["quantization"]["calibration"]["method"] == "entropy" and not manifest["dropped"]
    assert search[0]["drop_points"] > 0.5 >= search[1]["drop_points"] and search[1]["fp32_nodes"] == []


def test_pruned_model_exports(tmp_path: Path, digits_run_dir: Path, manifest: dict) -> None:
    import onnxruntime as ort

    from edgekd.export import export_run
    from edgekd.prune import prune_run

    pruned_run = tmp_path / "pruned"
    prune_run(digits_run_dir, pruned_run, ratio=0.5, method="structured")
    out = tmp_path / "exp"
    pruned = export_run(pruned_run, out, formats=("onnx",), int8=True, calib_samples=64, max_drop=None, progress=False)
    fp32 = pruned["artifacts"]["onnx-fp32"]
    assert fp32["agreement"] == 1.0 and fp32["max_abs_diff"] < 1e-3
    assert pruned["artifacts"]["onnx-int8"]["agreement"] >= 0.95
    assert fp32["size_bytes"] < 0.5 * manifest["artifacts"]["onnx-fp32"]["size_bytes"]  # the channels really went
    session = ort.InferenceSession(str(out / fp32["files"][0]), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": np.zeros((3, 3, 32, 32), np.float32)})[0].shape == (3, 10)


def test_openvino_only_with_fp16(tmp_path: Path, digits_run_dir: Path, val_data, torch_logits) -> None:
    from edgekd.export import export_run

    out = tmp_path / "exp"
    manifest = export_run(digits_run_dir, out, formats=("openvino",), fp16=True, progress=False)
    assert set(manifest["artifacts"]) == {"openvino-fp32", "openvino-fp16"}
    assert not (out / "model.onnx").exists()  # the intermediate ONNX file stayed in scratch space
    fp16 = manifest["artifacts"]["openvino-fp16"]
    assert fp16["size_bytes"] < 0.6 * manifest["artifacts"]["openvino-fp32"]["size_bytes"]
    assert fp16["agreement"] >= 0.99 and 0 < fp16["max_abs_diff"] < 0.1


def test_bad_options(tmp_path: Path, digits_run_dir: Path) -> None:
    from edgekd.export import export_run

    for kwargs, match in [
        ({"calib_method": "kl"}, "unknown calibration method"),
        ({"calib_samples": 0}, "calib_samples"),
        ({"formats": ("onnx",), "fp16": True}, "fp16"),
        ({"int8": True, "max_drop": -1}, "between 0 and 100"),
        ({"int8": True, "max_drop": float("nan")}, "between 0 and 100"),
    ]:
        with pytest.raises(EdgeKDError, match=match):
            export_run(digits_run_dir, tmp_path / "exp", progress=False, **kwargs)
    _no_export_left(tmp_path / "exp")


def _activation_scales(path: Path) -> np.ndarray:
    """Scales of the activation QuantizeLinear nodes (weights are stored quantized, so these are all activations)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return np.array([float(inits[n.input[1]]) for n in model.graph.node if n.op_type == "QuantizeLinear"])


def test_entropy_and_percentile_calibration_really_clip_the_ranges(tmp_path: Path, digits_run_dir: Path) -> None:
    """Each method reaches ORT's calibrator with our bin settings (ORT's own entropy defaults reproduce minmax).

    Entropy clips hardest and costs agreement on digits (ink pixels sit at the top of the input range), which
    is what ``--max-drop`` is for; minmax and percentile keep the >= 98 % of the default path.
    """
    from edgekd.export import export_run

    scales = {}
    for method in ("minmax", "entropy", "percentile"):
        out = tmp_path / method
        # 38 = 2 x 19: not a multiple of the calibration batch (a short last batch broke the histogram calibrators)
        manifest = export_run(digits_run_dir, out, formats=("onnx",), int8=True, calib_samples=38, calib_method=method,
                              max_drop=None, progress=False)
        int8 = manifest["artifacts"]["onnx-int8"]
        assert int8["quantization"]["calibration"] == {"split": "train", "samples": 38, "method": method}
        assert int8["agreement"] >= (0.85 if method == "entropy" else 0.98), method
        scales[method] = _activation_scales(out / int8["files"][0])
    assert len(scales["minmax"]) > 5 and all(len(s) == len(scales["minmax"]) for s in scales.values())
    # both methods clip the rare extremes minmax must cover: no range is wider, most are narrower
    for method in ("entropy", "percentile"):
        assert (scales[method] <= scales["minmax"] * (1 + 1e-6)).all(), method
        assert (scales[method] < scales["minmax"]).mean() > 0.5, method
        assert scales[method].sum() < 0.99 * scales["minmax"].sum(), method


@pytest.mark.parametrize("count, batch", [(300, 15), (32, 16), (7, 7), (293, 1)])
def test_calibration_batches_are_equal_and_cover_every_image(count: int, batch: int) -> None:
    from edgekd.export.formats.onnx import _CalibrationReader

    images = np.arange(count, dtype=np.float32).reshape(count, 1, 1, 1)
    seen: list[int] = []
    reader = _CalibrationReader(images, seen.append)
    chunks = list(iter(reader.get_next, None))
    assert {c["input"].shape[0] for c in chunks} == {batch} and sum(seen) == count
    assert np.concatenate([c["input"] for c in chunks]).ravel().tolist() == list(range(count))


@contextlib.contextmanager
def small_disk(folder: Path, size_kb: int) -> Iterator[Path]:
    """A tmpfs of ``size_kb`` mounted at ``folder`` (root only; CI runs as root, so there it must work)."""
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode:
        message = f"cannot mount a {size_kb} kB tmpfs here: {mounted.stderr.strip()}"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.slow
@pytest.mark.parametrize("size_kb", [100, 400])  # full while torch writes the ONNX file; while OpenVINO converts it
def test_an_export_onto_a_full_disk_is_one_line_saying_so_and_leaves_nothing(digits_run_dir, tmp_path, monkeypatch,
                                                                              capsys, size_kb):
    with small_disk(tmp_path / "disk", size_kb) as disk:
        code, out, err = run_cli(monkeypatch, capsys, "export", str(digits_run_dir), "--out", str(disk / "exp"),
                                 "--formats", "onnx,openvino")
        last = err.strip().splitlines()[-1]  # after the progress bars, on stderr too
        assert code == 2 and last.startswith(f"error: the disk is full: no space left under {disk} ("), err
        assert "Traceback" not in err and err.count("error:") == 1, err
        assert list(disk.iterdir()) == []  # the partial export is gone


def test_named_layers_stay_fp32_in_the_onnx_int8_artifact(digits_run_dir, tmp_path):
    import onnx

    from edgekd.export import export_run
    from edgekd.export.formats.onnx import quantizable_nodes

    plain = export_run(digits_run_dir, tmp_path / "plain", formats=("onnx",), int8=True, max_drop=None,
                       calib_samples=32, progress=False)
    assert plain["artifacts"]["onnx-int8"]["quantization"]["fp32_nodes"] == []
    layers = quantizable_nodes(onnx.load(str(tmp_path / "plain" / "model.int8.onnx")).graph.node)
    keep = [layers[2]]
    manifest = export_run(digits_run_dir, tmp_path / "mixed", formats=("onnx",), int8=True, max_drop=None,
                          calib_samples=32, fp32_nodes=keep, progress=False)
    assert manifest["artifacts"]["onnx-int8"]["quantization"]["fp32_nodes"] == keep
    graph = onnx.load(str(tmp_path / "mixed" / "model.int8.onnx")).graph
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    assert [n.name for n in graph.node if n.op_type in ("Conv", "Gemm") and n.input[1] not in dequantized] == keep

    with pytest.raises(EdgeKDError, match=r"fp32_nodes: no quantizable node 'conv9' in the ONNX graph; its nodes "
                                          r"are /"):
        export_run(digits_run_dir, tmp_path / "bad", formats=("onnx",), int8=True, fp32_nodes=["conv9"],
                   progress=False)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(EdgeKDError, match="fp32_nodes keeps ONNX nodes in FP32 .* needs int8 and the onnx format"):
        export_run(digits_run_dir, tmp_path / "fp32", formats=("onnx",), fp32_nodes=keep, progress=False)
