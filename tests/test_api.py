"""The Python API (``edgekd.api``): the README's example runs as written, and its device side stays torch-free."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_python_example() -> str:
    [example] = [block for block in re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
                 if "from edgekd import" in block]
    return example


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_readme_python_example_runs_as_written(tmp_path, monkeypatch, capsys):
    """train -> distill -> prune and recover -> export INT8 -> bench -> predict, on digits, from the README."""
    monkeypatch.chdir(tmp_path)
    Image.new("L", (8, 8), 40).save(tmp_path / "digit.png")
    exec(compile(readme_python_example(), "README.md", "exec"), {"__name__": "readme"})  # noqa: S102
    out = capsys.readouterr().out.strip().splitlines()
    timed = eval(out[-3])  # noqa: S307 - what the example printed: (runtime, precision, batch, p50_ms) per row
    assert {(r, p, b) for r, p, b, _ in timed} >= {("ort", "fp32", 1), ("ort", "int8", 1), ("ort", "int8", 8)}
    assert all(ms > 0 for *_, ms in timed)
    predictions = eval(out[-2])  # noqa: S307
    assert len(predictions) == 3 and abs(sum(p["score"] for p in predictions) - 1) < 1 + 1e-6
    assert {p["label"] for p in predictions} <= {str(d) for d in range(10)}
    best, artifacts = out[-1].split(" ", 1)
    assert 0.3 < float(best) <= 1.0 and "onnx-int8" in artifacts
    summary = (tmp_path / "runs" / "py-pruned" / "summary.json").read_text()
    assert '"acc_recovered"' in summary and (tmp_path / "runs" / "py-pruned-export" / "manifest.json").is_file()


def test_import_edgekd_and_the_export_object_leave_torch_out(export_dir, tmp_path):
    image = tmp_path / "digit.png"
    Image.new("RGB", (8, 8), (200, 200, 200)).save(image)
    script = f"""
import sys
import edgekd
assert "torch" not in sys.modules, "import edgekd"
from edgekd import EdgeKDError, Export
export = Export({str(export_dir)!r})
rows = export.bench(batch=1, runtimes=["ort"], precisions=["int8"], seconds=0.1, warmup=2)
assert rows[0]["status"] == "ok", rows
[result] = export.predict([{str(image)!r}], top_k=2)
assert len(result["predictions"]) == 2, result
try:
    Export({str(tmp_path / "missing")!r})
except EdgeKDError as e:
    assert "does not exist" in str(e)
else:
    raise AssertionError("a missing export dir was accepted")
assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_a_run_object_refuses_what_is_not_a_run_dir(tmp_path):
    from edgekd import EdgeKDError, Run

    with pytest.raises(EdgeKDError, match="is not an edgekd run dir: it needs model.safetensors and model.json"):
        Run.load(tmp_path)
    with pytest.raises(EdgeKDError, match="does not exist"):
        Run.load(tmp_path / "missing")
