"""`edgekd bench` on this machine for the export benchmark's two models, report committed as bench-x86.md.

Trains each model briefly (latency does not depend on how well it learned; accuracy is reported as measured),
exports FP32 + INT8, then runs the same benchmark `edgekd bench` runs, batch 1 and 8.

    uv run --all-extras python benchmarks/bench_x86.py
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from edgekd.config import load_config
from edgekd.export import export_run
from edgekd.export.bench import run_bench
from edgekd.export.bench_report import render_markdown, write_report
from edgekd.train import run_training

MODELS = [
    ("digits", {}, "resnet8x4", 3),
    ("synthetic", {"count": 600, "val_count": 200}, "resnet32x4", 1),
]


def main() -> None:
    results = Path(__file__).parent / "results"
    sections = []
    with tempfile.TemporaryDirectory(prefix="edgekd-bench-") as tmp:
        for data, options, arch, epochs in MODELS:
            run = Path(tmp) / f"{arch}-{data}"
            run_training(load_config(overrides={"data": data, "data_options": options, "model": arch, "epochs": epochs,
                                                "batch_size": 16, "lr": 0.05, "out": str(run)}), show_progress=False)
            export = Path(tmp) / f"export-{arch}-{data}"
            export_run(run, export, int8=True, calib_samples=128, progress=False)
            rows = run_bench(export, batches=(1, 8), seconds=1.5, warmup=20, progress=False)
            title = f"{arch} trained {epochs} epoch(s) on {data}"
            paths = write_report(rows, Path(tmp) / f"report-{arch}", title)
            shutil.copy(paths["png"], results / f"bench-x86-{arch}.png")
            sections.append(render_markdown(rows, title) + f"\n![latency](bench-x86-{arch}.png)\n")
    (results / "bench-x86.md").write_text("# edgekd bench on this x86 machine\n\n" + "\n".join(sections))
    print((results / "bench-x86.md").read_text())


if __name__ == "__main__":
    main()
