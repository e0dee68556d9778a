"""The peer server for benchmarks/serve_load.py: LitServe serving an edgekd export with dynamic batching.

    python benchmarks/litserve_peer.py EXPORT_DIR --port 8001 [--threads N] [--max-batch 8]

Set up as LitServe's docs do for a batched model: ``decode_request`` decodes one upload, LitServe stacks the
samples, ``predict`` runs one batch, ``encode_response`` answers one sample. Preprocessing and runtime are
edgekd's, so the only difference to `edgekd serve` is the server. Its own module because LitServe starts
its inference worker with spawn, which pickles the API class by its module-level name.
"""

from __future__ import annotations

import argparse

import litserve as ls
import numpy as np

from edgekd.contracts.manifest import load_manifest
from edgekd.runtimes import open_artifact, select_artifact
from edgekd.serve.preprocess import Preprocessor
from serve_load import top5  # this script runs from benchmarks/, beside it


class ExportAPI(ls.LitAPI):
    def __init__(self, export_dir: str, threads: int | None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.export_dir, self.threads = export_dir, threads

    def setup(self, device: str) -> None:
        self.manifest = load_manifest(self.export_dir)
        key = select_artifact(self.manifest)
        self.runtime = open_artifact(self.export_dir, self.manifest, key, threads=self.threads)
        self.pre = Preprocessor.from_manifest(self.manifest)

    def decode_request(self, request) -> np.ndarray:
        return self.pre(request["file"].file.read())

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.runtime.run(x)

    def encode_response(self, output: np.ndarray) -> dict:
        return top5(output, self.manifest["class_names"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("export_dir")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--threads", type=int, default=None, help="runtime intra-op threads")
    p.add_argument("--max-batch", type=int, default=8, help="samples per model call (edgekd serve's default)")
    p.add_argument("--batch-timeout-ms", type=float, default=1.0,
                   help="how long LitServe waits to fill a batch; at 0 its worker polls its queue without sleeping and "
                        "takes a core while idle, so the smallest wait that does not")
    args = p.parse_args()
    api = ExportAPI(args.export_dir, args.threads, max_batch_size=args.max_batch,
                    batch_timeout=args.batch_timeout_ms / 1000)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, healthcheck_path="/v2/health/ready")
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False, num_api_servers=1)


if __name__ == "__main__":
    main()
