"""Load test of `edgekd serve` on loopback, side by side with the raw runtime, a naive FastAPI handler and LitServe.

    uv run --all-extras --group bench python benchmarks/serve_load.py EXPORT_DIR [--rounds 5] [--seconds 4] \
        [--soak-seconds 60] [--out benchmarks/results/serve.md]

Measures, for 1, 4 and 16 closed-loop clients (each with one keep-alive connection, posting digit PNGs):
(a) the runtime called in-process (batch 1, one thread per client), (b) a naive FastAPI app that runs one
inference per request in FastAPI's thread pool with the same preprocessing, (c) LitServe (the `bench`
dependency group; the row is left out without it) with dynamic batching on the same artifact and
preprocessing, (d) our batching server. The servers are measured in interleaved rounds and each number is the
median over the rounds. Then cold
start to ready (median of three starts), RSS, and RSS growth over a soak run at 16 clients.
Every phase is bounded in time and request count and the servers are stopped at the end, so the script
always finishes by itself. KServe v2 JSON bodies built to exhaust the server (memory, event loop) at the upload
limit are measured by `benchmarks/serve_hostile.py`.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httptools
import numpy as np
from fastapi import FastAPI, File, UploadFile  # module level: the naive handler's annotations are resolved here

LEVELS = (1, 4, 16)
MAX_REQUESTS = 200_000  # per phase, on top of the time bound
COLD_STARTS = 3
BOUNDARY = "edgekd-bench-boundary"


# ------------------------------------------------------------------------------------ inputs


def digit_pngs(count: int = 64) -> list[bytes]:
    """Held-out-like digit images as PNG files (scikit-learn's bundled digits; random images without it)."""
    from PIL import Image

    try:
        from sklearn.datasets import load_digits

        images = np.round(load_digits().images[-count:] * (255.0 / 16.0)).astype(np.uint8)
    except ImportError:
        images = np.random.default_rng(0).integers(0, 256, (count, 8, 8), dtype=np.uint8)
    out = []
    for a in images:
        buf = io.BytesIO()
        Image.fromarray(a).convert("RGB").save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def multipart(png: bytes) -> bytes:
    head = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="d.png"\r\n'
            'Content-Type: image/png\r\n\r\n')
    return head.encode() + png + f"\r\n--{BOUNDARY}--\r\n".encode()


# ------------------------------------------------------------------------------------ measurement


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants: LitServe answers from an API-server and an inference-worker process."""
    tree, i = [pid], 0
    while i < len(tree):
        for task in Path(f"/proc/{tree[i]}/task").iterdir():
            with contextlib.suppress(OSError):
                tree += [int(c) for c in (task / "children").read_text().split()]
        i += 1
    return tree


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of a server, summed over its processes (``VmHWM``: each process's high-water mark)."""
    total = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            total += next(int(line.split()[1]) for line in Path(f"/proc/{p}/status").read_text().splitlines()
                          if line.startswith(field + ":"))
    return total / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a server's processes: a cost per request a busy shared machine does not distort."""
    ticks = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def measured(pid: int, clients: int, seconds: float, call) -> dict[str, float]:
    """``closed_loop`` plus the server's CPU milliseconds per answered request."""
    before = cpu_seconds(pid)
    row = closed_loop(clients, seconds, call)
    row["cpu_ms"] = (cpu_seconds(pid) - before) * 1000 / max(row["requests"], 1)
    return row


def summarize(latencies: list[float], errors: int, seconds: float) -> dict[str, float]:
    ms = np.asarray(latencies) * 1000 if latencies else np.asarray([np.nan])
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "throughput": len(latencies) / seconds,
        "requests": len(latencies),
        "errors": errors,
    }


def closed_loop(clients: int, seconds: float, call) -> dict[str, float]:
    """``clients`` threads each calling ``call(worker_state, i)`` back to back until time or count runs out."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    stop = time.perf_counter() + seconds
    budget = MAX_REQUESTS // clients

    def worker(k: int) -> None:
        state: dict = {}
        i = k
        while time.perf_counter() < stop and len(latencies[k]) < budget:
            t0 = time.perf_counter()
            try:
                ok = call(state, i)
            except Exception:  # a failed request is counted, the load goes on
                ok = False
                state.clear()
            if ok:
                latencies[k].append(time.perf_counter() - t0)
            else:
                errors[k] += 1
            i += clients
        if "conn" in state:
            state["conn"].close()

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return summarize([x for lat in latencies for x in lat], sum(errors), time.perf_counter() - start)


class _Response:
    """httptools callbacks for one response: notes when it is complete."""

    def __init__(self) -> None:
        self.complete = False

    def on_message_complete(self) -> None:
        self.complete = True


def http_caller(port: int, bodies: list[bytes]):
    """POST /predict over one keep-alive socket per client, responses parsed by httptools' C parser.

    The load generator shares the two cores with the servers under test, so it should cost as little as
    it can: http.client took 0.3 ms of CPU per request (its header parsing is pure Python), this takes 0.1.
    What the client takes squeezes both servers alike and pulls their throughput ratio towards 1.
    """
    requests = [
        (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
         f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
         f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        for body in bodies
    ]

    def call(state: dict, i: int) -> bool:
        if "conn" not in state:
            state["conn"] = socket.create_connection(("127.0.0.1", port), timeout=30)
            state["conn"].setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = state["conn"]
        sock.sendall(requests[i % len(requests)])
        response = _Response()
        parser = httptools.HttpResponseParser(response)
        while not response.complete:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the connection")
            parser.feed_data(data)
        return parser.get_status_code() == 200

    return call


# ------------------------------------------------------------------------------------ servers


def top5(logits: np.ndarray, class_names: list[str]) -> dict:
    """Softmax top-5 of one sample's logits: the answer of the naive handler and of the LitServe peer."""
    logits = logits.astype(np.float64)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    top = np.argsort(-p)[:5]
    return {"predictions": [{"index": int(i), "label": class_names[i], "score": float(p[i])} for i in top]}


def naive_app(export_dir: str, threads: int | None = None):
    """One inference per request, run in FastAPI's thread pool: the baseline dynamic batching must beat."""
    from edgekd.contracts.manifest import load_manifest
    from edgekd.runtimes import open_artifact, select_artifact
    from edgekd.serve.preprocess import Preprocessor

    manifest = load_manifest(export_dir)
    runtime = open_artifact(export_dir, manifest, select_artifact(manifest), threads=threads)
    pre = Preprocessor.from_manifest(manifest)
    app = FastAPI()

    @app.get("/v2/health/ready")
    def ready() -> dict:
        return {"ready": True}

    @app.post("/predict")
    def predict(file: UploadFile = File(...)) -> dict:
        return top5(runtime.run(pre(file.file.read())[None])[0], manifest["class_names"])

    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(cmd: list[str], port: int, timeout: float = 60.0,
                 log: Path | None = None) -> tuple[subprocess.Popen, float]:
    """Start a server process; return it and the seconds until /v2/health/ready answered 200. ``log``: a file for
    its output, which a long or failing run may need (else stderr is kept only to report an early exit)."""
    start = time.perf_counter()
    # its own process group, so that stop() also ends the worker processes a server (LitServe) starts
    with open(log, "w") if log is not None else contextlib.nullcontext(subprocess.DEVNULL) as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if log is not None else subprocess.PIPE,
                                text=True, start_new_session=True)
    while time.perf_counter() - start < timeout:
        if proc.poll() is not None:
            said = log.read_text() if log is not None else proc.stderr.read()
            raise RuntimeError(f"server exited: {said[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/v2/health/ready")
            if conn.getresponse().status == 200:
                return proc, time.perf_counter() - start
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise RuntimeError("server did not become ready in time")


def stop(proc: subprocess.Popen) -> None:
    """Stop a server and every process of its group (a worker left behind would load the next measurements)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


# ------------------------------------------------------------------------------------ report


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip() if os.name == "posix" else "n/a"
    return (f"{cpu}, {os.cpu_count()} logical cores, {platform.machine()}, Python {platform.python_version()}; "
            f"`uptime`: {load}")


def median_row(samples: list[dict[str, float]]) -> dict[str, float]:
    """Per-metric median over the rounds of one (server, clients) cell."""
    return {k: float(np.median([r[k] for r in samples])) for k in samples[0]}


def run(args: argparse.Namespace) -> str:
    from edgekd.contracts.manifest import load_manifest
    from edgekd.runtimes import open_artifact, select_artifact
    from edgekd.serve.preprocess import Preprocessor

    export_dir = args.export_dir
    manifest = load_manifest(export_dir)
    key = select_artifact(manifest)
    pngs = digit_pngs()
    bodies = [multipart(p) for p in pngs]
    before = machine()
    try:
        import litserve

        peer = f"LitServe {litserve.__version__}"
    except ImportError:
        peer = None
        print("litserve is not installed (uv sync --group bench): its row is left out", file=sys.stderr)
    names = ("runtime (in-process)", "naive FastAPI", *([peer] if peer else []), "edgekd serve")
    samples: dict[str, dict[int, list[dict[str, float]]]] = {n: {c: [] for c in LEVELS} for n in names}

    runtime = open_artifact(export_dir, manifest, key, threads=args.threads)
    pre = Preprocessor.from_manifest(manifest)
    xs = [pre(p)[None] for p in pngs]
    for _ in range(50):
        runtime.run(xs[0])

    py = sys.executable
    threads = ["--threads", str(args.threads)] if args.threads else []

    def serve_cmd(port: int) -> list[str]:
        return [py, "-m", "edgekd.serve", export_dir, "--port", str(port), "--log-level", "warning", *threads]

    colds = []
    for _ in range(COLD_STARTS - 1):  # one start is at the mercy of a neighbour's load spike: take the median
        port = free_port()
        proc, seconds = start_server(serve_cmd(port), port)
        colds.append(seconds)
        stop(proc)
    ours_port = free_port()
    ours, seconds = start_server(serve_cmd(ours_port), ours_port)
    colds.append(seconds)
    cold = float(np.median(colds))
    naive = lit = None
    try:
        idle_rss = rss_mb(ours.pid)
        cold_cpu = cpu_seconds(ours.pid)
        naive_port = free_port()
        naive, _ = start_server([py, __file__, "--naive-server", export_dir, "--port", str(naive_port), *threads],
                                naive_port)
        servers = {"naive FastAPI": (naive.pid, http_caller(naive_port, bodies))}
        if peer:
            lit_port = free_port()
            peer_cmd = [py, str(Path(__file__).with_name("litserve_peer.py")), export_dir, "--port", str(lit_port)]
            lit, _ = start_server([*peer_cmd, *threads], lit_port)
            servers[peer] = (lit.pid, http_caller(lit_port, bodies))
        servers["edgekd serve"] = (ours.pid, http_caller(ours_port, bodies))
        for _, caller in servers.values():
            closed_loop(4, 1.0, caller)  # warm-up
        # Rounds interleave the three, alternating which server goes first, so that a slow spell of a shared
        # machine lands on all of them instead of on whichever happened to run then.
        for r in range(args.rounds):
            order = list(servers) if r % 2 == 0 else list(servers)[::-1]
            for clients in LEVELS:
                samples[names[0]][clients].append(
                    closed_loop(clients, args.seconds, lambda state, i: runtime.run(xs[i % len(xs)]) is not None))
                for name in order:
                    pid, caller = servers[name]
                    samples[name][clients].append(measured(pid, clients, args.seconds, caller))
        naive_rss = rss_mb(naive.pid)
        stop(naive)
        naive = None
        if lit is not None:
            lit_rss = rss_mb(lit.pid)
            stop(lit)
            lit = None
        soak_start_rss = rss_mb(ours.pid)
        soak = closed_loop(16, args.soak_seconds, servers["edgekd serve"][1])
        soak_end_rss = rss_mb(ours.pid)
    finally:
        stop(ours)
        for proc in (naive, lit):
            if proc is not None:
                stop(proc)

    rows = {n: {c: median_row(samples[n][c]) for c in LEVELS} for n in names}
    raw1 = rows[names[0]][1]["p50_ms"]
    ours1 = rows["edgekd serve"][1]["p50_ms"]
    ratios = [o["throughput"] / n["throughput"]
              for o, n in zip(samples["edgekd serve"][16], samples["naive FastAPI"][16])]
    speedup = float(np.median(ratios))
    if peer:
        peer_ratios = [o["throughput"] / n["throughput"]
                       for o, n in zip(samples["edgekd serve"][16], samples[peer][16])]
        peer_p50 = rows[peer][1]["p50_ms"]
    growth = (soak_end_rss - soak_start_rss) / soak_start_rss * 100
    errors = sum(r["errors"] for by_level in samples["edgekd serve"].values() for r in by_level) + soak["errors"]
    checks = [
        ("p50 at 1 client <= runtime + 3 ms", f"{ours1:.2f} ms vs {raw1:.2f} + 3 ms", ours1 <= raw1 + 3),
        ("throughput at 16 clients >= 1.5x naive", f"{speedup:.2f}x (rounds: {', '.join(f'{x:.2f}' for x in ratios)})",
         speedup >= 1.5),
        ("errors", f"{errors}", errors == 0),
        (f"RSS growth over {args.soak_seconds:g} s at 16 clients <= 10 %",
         f"{growth:+.1f} % ({soak_start_rss:.0f} -> {soak_end_rss:.0f} MB)", growth <= 10),
        ("cold start to ready <= 2 s",
         f"{cold:.2f} s wall (median of {', '.join(f'{c:.2f}' for c in colds)}), {cold_cpu:.2f} s CPU", cold <= 2),
        ("RSS <= 250 MB", f"{max(idle_rss, soak_end_rss):.0f} MB (idle {idle_rss:.0f} MB)",
         max(idle_rss, soak_end_rss) <= 250),
    ]
    if peer:
        checks.append((f"throughput at 16 clients vs {peer} (reported, no target)",
                       f"{np.median(peer_ratios):.2f}x (rounds: {', '.join(f'{x:.2f}' for x in peer_ratios)}); "
                       f"p50 at 1 client {ours1:.2f} vs {peer_p50:.2f} ms", None))
    lines = [
        "# Serving benchmark",
        "",
        f"`python benchmarks/serve_load.py EXPORT_DIR --rounds {args.rounds} --seconds {args.seconds:g} "
        f"--soak-seconds {args.soak_seconds:g}"
        f"{f' --threads {args.threads}' if args.threads else ''}`, "
        f"model `{manifest['model']}`, artifact `{key}`, runtime threads {args.threads or 'ORT default'}, "
        "digit PNGs posted as multipart over loopback "
        "by client threads on keep-alive sockets with httptools parsing the answers "
        "(closed loop: each client sends its next request when the previous answer arrives). "
        f"{args.rounds} interleaved rounds of {args.seconds:g} s per server and load level; "
        "each cell is the median over the rounds, "
        "the throughput ratio the median of the per-round ratios.",
        "",
        f"Machine before: {before}",
        "",
        f"Machine after: {machine()}",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        *[f"| {name} | {value} | {'–' if ok is None else 'yes' if ok else '**no**'} |" for name, value, ok in checks],
        "",
        "| server | clients | p50 ms | p99 ms | requests/s | requests | errors | server CPU ms/request |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, by_level in rows.items():
        for clients, r in by_level.items():
            lines.append(f"| {name} | {clients} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['throughput']:.0f} | "
                         f"{r['requests']:.0f} | {r['errors']:.0f} | {r.get('cpu_ms', float('nan')):.2f} |")
    lines.append(f"| edgekd serve, soak {args.soak_seconds:g} s | 16 | {soak['p50_ms']:.2f} | {soak['p99_ms']:.2f} | "
                 f"{soak['throughput']:.0f} | {soak['requests']} | {soak['errors']} | |")
    lines += ["", f"Naive server RSS after its runs: {naive_rss:.0f} MB."
              + (f" {peer} RSS after its runs (all its processes): {lit_rss:.0f} MB." if peer else ""), ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("export_dir")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds of every server and load level")
    p.add_argument("--seconds", type=float, default=4.0, help="duration of each load level in each round")
    p.add_argument("--soak-seconds", type=float, default=60.0, help="duration of the RSS-growth run")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "serve.md")
    p.add_argument("--threads", type=int, default=None,
                   help="runtime intra-op threads, same for all three (default: ORT's)")
    p.add_argument("--naive-server", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=8000, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.naive_server:
        import uvicorn

        uvicorn.run(naive_app(args.export_dir, args.threads), host="127.0.0.1", port=args.port, log_level="warning",
                    access_log=False)
        return
    report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
