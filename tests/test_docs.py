"""The documentation: the CLI reference is generated from the CLI, so it cannot drift from it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI_REFERENCE = ROOT / "docs" / "reference" / "cli.md"
REGENERATE = [sys.executable, "-m", "typer", "edgekd.cli", "utils", "docs", "--name", "edgekd", "--title",
              "Command line"]


def test_the_cli_reference_is_what_the_cli_generates(tmp_path):
    """After changing an option or a help text: python -m typer edgekd.cli utils docs --name edgekd --title
    "Command line" --output docs/reference/cli.md"""
    out = tmp_path / "cli.md"
    subprocess.run([*REGENERATE, "--output", str(out)], check=True, capture_output=True, cwd=ROOT,
                   env={"PATH": "/usr/bin:/bin", "COLUMNS": "80"})
    assert out.read_text() == CLI_REFERENCE.read_text(), "docs/reference/cli.md is stale; regenerate it (see above)"
    for command in ("train", "distill", "methods", "prune", "export", "bench", "serve", "val", "predict"):
        assert f"## `edgekd {command}`" in out.read_text()
