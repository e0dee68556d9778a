"""``python -m edgekd.serve EXPORT_DIR``: the server without the full CLI (Docker image, torch-free installs)."""

from __future__ import annotations

import argparse
import os
import sys

from edgekd.errors import EdgeKDError
from edgekd.serve.preprocess import DEFAULT_MAX_PIXELS
from edgekd.serve.server import LOG_LEVELS, run_server


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m edgekd.serve", description="Serve an edgekd export dir over HTTP.")
    p.add_argument("export_dir", help="folder written by `edgekd export` (with manifest.json)")
    p.add_argument("--runtime", choices=["ort", "openvino"], default=None, help="default: ONNX Runtime when the export has it for the chosen precision")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default=None, help="default: INT8 when exported")
    p.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 to accept remote clients)")
    p.add_argument("--port", type=int, default=os.environ.get("EDGEKD_PORT", "8000"), help="TCP port (default: env EDGEKD_PORT, else 8000)")
    p.add_argument("--max-batch", type=int, default=8, help="most samples per model call")
    p.add_argument("--batch-timeout-ms", type=float, default=0.0, help="extra wait for a batch to fill (0: batch what queued meanwhile)")
    p.add_argument("--queue-size", type=int, default=256, help="requests waiting before 503")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted image file")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="largest accepted image (decompression-bomb guard)")
    p.add_argument("--threads", type=int, default=None, help="runtime intra-op threads (default: one per core)")
    p.add_argument("--api-key", default=os.environ.get("EDGEKD_API_KEY"), help="require this key (default: env EDGEKD_API_KEY)")
    p.add_argument("--log-level", default="info", choices=LOG_LEVELS)
    p.add_argument("--access-log", action="store_true", help="log every request")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run_server(
            args.export_dir,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            access_log=args.access_log,
            runtime=args.runtime,
            precision=args.precision,
            max_batch=args.max_batch,
            batch_timeout_ms=args.batch_timeout_ms,
            queue_size=args.queue_size,
            max_upload_mb=args.max_upload_mb,
            max_pixels=args.max_pixels,
            threads=args.threads,
            api_key=args.api_key or None,
        )
    except EdgeKDError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
