"""edgekd val and edgekd predict on the session's real export: the manifest's accuracy reproduced without torch,
the server's answers without a server, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conftest import run_cli
from edgekd.contracts.manifest import load_manifest
from edgekd.serve.app import create_app

pytestmark = pytest.mark.slow

# `edgekd ...` with torch and scikit-learn unimportable: what a device install (edgekd[device]) has
NO_TRAINING_SIDE = textwrap.dedent(
    """
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision", "sklearn"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, Block())
    sys.argv = ["edgekd", *sys.argv[1:]]
    from edgekd.cli import main
    main()
    """
)


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The held-out digits the exporter scored, written by the training side as PNGs in digits/<class>/."""
    from edgekd.data import build_data

    root = tmp_path_factory.mktemp("data") / "digits"
    bundle = build_data("digits")
    for i in range(len(bundle.raw_val)):
        image, label = bundle.raw_val[i]
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        image.save(root / str(label) / f"{i:03d}.png")
    return root


def test_val_reproduces_the_manifest_accuracy_of_every_artifact_without_torch(export_dir: Path, digits_folder: Path,
                                                                              tmp_path: Path):
    out = tmp_path / "val.json"
    proc = subprocess.run(
        [sys.executable, "-c", NO_TRAINING_SIDE, "val", str(export_dir), "--data", str(digits_folder),
         "--json", str(out)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "120"},
    )
    assert proc.returncode == 0, proc.stderr
    manifest = load_manifest(export_dir)
    report = json.loads(out.read_text())
    assert report["images"] == manifest["eval"]["samples"] == 360 and report["unreadable"] == []
    assert (sorted(r["artifact"] for r in report["artifacts"]) == sorted(manifest["artifacts"])
            and len(manifest["artifacts"]) == 4)
    per_folder = {d.name: len(list(d.iterdir())) for d in digits_folder.iterdir()}
    for row in report["artifacts"]:
        entry = manifest["artifacts"][row["artifact"]]
        assert row["status"] == "ok" and row["top1"] == entry["accuracy"], row  # the same images counted the same way
        assert row["correct"] == round(entry["accuracy"] * 360) and row["top1"] <= row["top5"] <= 1.0
        assert {name: c["images"] for name, c in row["per_class"].items()} == per_folder
        assert sum(c["correct"] for c in row["per_class"].values()) == row["correct"]
        assert all(c["top1"] == c["correct"] / c["images"] for c in row["per_class"].values())
        assert f"{row['artifact']} " in proc.stdout and f"{row['top1']:.4f}" in proc.stdout
    assert "per-class top-1" in proc.stdout


@pytest.mark.parametrize("runtime, precision", [(None, None), ("openvino", "fp32")])
def test_predict_gives_the_servers_answers(monkeypatch, capsys, export_dir: Path, digits_folder: Path, tmp_path: Path,
                                           runtime: str | None, precision: str | None):
    files = sorted((digits_folder / "3").iterdir())[:8] + sorted((digits_folder / "8").iterdir())[:8]
    folder = tmp_path / "some"
    (folder / "nested").mkdir(parents=True)
    for f in files:
        shutil.copy(f, folder / "nested" / f"{f.parent.name}-{f.name}")
    (folder / "notes.txt").write_text("not an image, and not picked up from a folder")
    options = [f"--{name}={value}" for name, value in (("runtime", runtime), ("precision", precision)) if value]
    monkeypatch.setenv("COLUMNS", "250")  # whole paths in the table
    code, out, err = run_cli(monkeypatch, capsys, "predict", str(export_dir), str(folder), "--top-k", "10",
                             "--batch", "5", "--json", str(tmp_path / "p.json"), *options)
    assert code == 0, err
    predicted = json.loads((tmp_path / "p.json").read_text())
    assert [r["file"] for r in predicted["files"]] == [str(p) for p in sorted((folder / "nested").iterdir())]
    with TestClient(create_app(export_dir, runtime=runtime, precision=precision)) as client:
        assert predicted["artifact"] == client.app.state.serve.artifact
        for result in predicted["files"]:
            body = Path(result["file"]).read_bytes()
            served = client.post("/predict", params={"top_k": 10}, files={"file": ("d.png", body, "image/png")}).json()
            mine = result["predictions"]
            assert (mine[0]["index"] == served["predictions"][0]["index"]
                    and mine[0]["label"] == served["predictions"][0]["label"])
            scores = {p["index"]: p["score"] for p in served["predictions"]}
            assert len(mine) == 10 and all(abs(p["score"] - scores[p["index"]]) <= 1e-5 for p in mine)
    first = predicted["files"][0]
    assert (f"{first['file']} " in out
            and f"{first['predictions'][0]['label']} {first['predictions'][0]['score']:.4f}" in out)


def test_bad_inputs_are_one_line_errors(monkeypatch, capsys, export_dir: Path, digits_folder: Path, tmp_path: Path):
    good = next((digits_folder / "5").iterdir())
    missing = [
        (("predict", str(export_dir), str(tmp_path / "missing.png")),
         "missing.png does not exist; pass image files or folders"),
        (("predict", str(digits_folder), str(good)), f"{digits_folder} has no manifest.json"),
        (("val", str(digits_folder), "--data", str(digits_folder)), f"{digits_folder} has no manifest.json"),
        (("val", str(export_dir), "--data", str(tmp_path / "nowhere")),
         "is not a folder; `edgekd val` reads a folder with one"),
        (("val", str(export_dir), "--data", str(export_dir)),
         "are not classes of this export (0, 1, 2, 3, 4, 5, 6, 7, 8, 9)"),
        (("predict", str(export_dir), str(good), "--top-k", "11"), "top-k must be between 1 and 10"),
        (("predict", str(export_dir), str(tmp_path)), "no image files"),
    ]
    monkeypatch.chdir(tmp_path)
    for args, message in missing:
        code, out, err = run_cli(monkeypatch, capsys, *args)
        assert (code, out) == (2, "") and len(err.strip().splitlines()) == 1 and message in err, (args, err)

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "corrupt.png").write_bytes(b"not a png at all")
    (bad / "truncated.png").write_bytes(good.read_bytes()[:60])
    code, out, err = run_cli(monkeypatch, capsys, "predict", str(export_dir), str(good), str(bad / "corrupt.png"),
                             str(bad / "truncated.png"), "--json", str(tmp_path / "p.json"))
    assert code == 1 and "Traceback" not in err and good.name in out
    assert err.strip().splitlines() == [
        f"error: {bad / 'corrupt.png'}: not an image: the data matches no image format Pillow can read",
        f"error: {bad / 'truncated.png'}: corrupt or truncated image (OSError: image file is truncated)",
    ], err
    results = json.loads((tmp_path / "p.json").read_text())["files"]
    assert [("predictions" in r, "error" in r) for r in results] == [(True, False), (False, True), (False, True)]

    labelled = tmp_path / "labelled"
    for name in ("1", "7"):
        shutil.copytree(digits_folder / name, labelled / name)
    shutil.copy(bad / "corrupt.png", labelled / "7" / "zz.png")
    code, out, err = run_cli(monkeypatch, capsys, "val", str(export_dir), "--data", f"imagefolder:{labelled}",
                             "--precisions", "int8", "--runtimes", "ort")
    images = sum(1 for d in ("1", "7") for _ in (digits_folder / d).iterdir())
    assert code == 1 and f"({images} images)" in out and "onnx-int8" in out and "openvino" not in out
    assert err.strip().splitlines()[-1] == (
        f"error: {labelled / '7' / 'zz.png'}: not an image: the data matches no image format Pillow can read")
