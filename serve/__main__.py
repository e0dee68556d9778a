"""``python -m edgekd.serve EXPORT_DIR``: the serve command without the full CLI (Docker image, torch-free installs)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from edgekd.errors import run_command
from edgekd.serve.command import serve


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(serve, argv, "python -m edgekd.serve")


if __name__ == "__main__":
    sys.exit(main())
