"""KServe v2 JSON bodies built to make a parser allocate far more than it reads, sent to `edgekd serve`: the
server's peak RSS, what it answered, how long another client's small `/predict` waited meanwhile, and what the
defence costs valid JSON requests.

    uv run --all-extras python benchmarks/serve_hostile.py EXPORT_DIR [--mb 10] [--clients 16] \
        [--against OTHER_PYTHON] [--out benchmarks/results/serve-hostile.md]

Each kind of body is sent by ``--clients`` clients at once, then by 4 at once while one client posts a small image
to `/predict` in a loop; every body is about ``--mb`` MB, the server's upload limit. Then 16 clients post valid
one-image JSON requests for a few seconds. ``--against`` names the Python of another edgekd install (an older
commit, say) whose server is measured in the same run, kind by kind and round by round with this tree's.
``tests/test_serve_memory.py`` runs the same bodies in the suite.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from serve_load import free_port, machine, rss_mb, start_server, stop

PROBE_EVERY_S = 0.02  # the small /predict client's pause between requests


def hostile_bodies(size: int, name: str, sample_shape: list[int]) -> dict[str, bytes]:
    """Bodies of about ``size`` bytes, by kind; only the last is a valid request (a batch of 64 written with every
    digit a float64 has)."""
    shape = [64, *sample_shape]
    one = int(np.prod(shape))

    def request(data: str, parameters: str = "") -> bytes:
        head = json.dumps({"name": name, "shape": shape, "datatype": "FP32"})[:-1]
        return f'{{{parameters}"inputs": [{head}, "data": {data}}}]}}'.encode()

    def repeated(item: str, budget: int) -> str:
        return "[" + ",".join([item] * max(1, budget // (len(item) + 1))) + "]"

    room = size - 200
    depth = room // 2
    in_parameters = f'"parameters": {{"x": {repeated("[0]", room - 2 * one)}}}, '
    return {
        "flat numbers": request(repeated("0.5", room)),
        "nested one-element lists": request(repeated("[0]", room)),
        "deeply nested one-element lists": request("[" * depth + "0" + "]" * depth),
        "numbers with long mantissas": request(repeated("0.12345678901234567890123456789012345678", room)),
        "lists in parameters": request(repeated("0", one), in_parameters),
        "valid batch of 64": request(json.dumps(np.random.default_rng(0).standard_normal(one).tolist())),
    }


def png_probe() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def post_json(client: httpx.Client, model: str, body: bytes) -> int:
    return client.post(f"/v2/models/{model}/infer", content=body, headers={"content-type": "application/json"}
                       ).status_code


def burst(url: str, model: str, body: bytes, clients: int) -> tuple[list[int], list[float]]:
    """``clients`` copies of ``body`` at once; meanwhile one client posts a small image to /predict in a loop.
    Returns the burst's statuses and the small requests' latencies (seconds)."""
    done = threading.Event()
    waits: list[float] = []
    image = png_probe()

    def probe() -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            while not done.is_set():
                start = time.perf_counter()
                r = client.post("/predict", files={"file": ("p.png", image, "image/png")})
                waits.append(time.perf_counter() - start)
                assert r.status_code == 200, r.text
                time.sleep(PROBE_EVERY_S)

    def send(_: int) -> int:
        with httpx.Client(base_url=url, timeout=120) as client:
            return post_json(client, model, body)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        with ThreadPoolExecutor(clients) as pool:
            statuses = list(pool.map(send, range(clients)))
    finally:
        done.set()
        prober.join(60)
    return statuses, waits


def hostile_row(url: str, pid: int, model: str, body: bytes, clients: int) -> dict:
    """The statuses of ``clients`` copies at once, the peak RSS so far, then the /predict wait while 4 arrive."""
    statuses, _ = burst(url, model, body, clients)
    peak = rss_mb(pid, "VmHWM")
    _, waits = burst(url, model, body, 4)
    return {"mb": len(body) / 1e6, "statuses": sorted(set(statuses)), "peak_rss_mb": peak, "probe_n": len(waits),
            "probe_p50_s": statistics.median(waits), "probe_max_s": max(waits)}


def throughput(url: str, model: str, body: bytes, clients: int = 16, seconds: float = 5.0) -> dict[str, float]:
    """Closed-loop valid requests: req/s, p50 and p99 (seconds)."""
    stop = time.perf_counter() + seconds
    latencies: list[float] = []

    def client(_: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            while time.perf_counter() < stop:
                start = time.perf_counter()
                assert post_json(c, model, body) == 200
                latencies.append(time.perf_counter() - start)

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return {"rps": len(latencies) / seconds, "p50": float(np.percentile(latencies, 50)),
            "p99": float(np.percentile(latencies, 99))}


def serve(python: str, export_dir: Path, log: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """``PYTHON -m edgekd.serve EXPORT_DIR`` on a free loopback port, its output in ``log``, once it answers ready."""
    port = free_port()
    proc, _ = start_server([python, "-m", "edgekd.serve", str(export_dir), "--port", str(port), *args], port,
                           timeout=120, log=log)
    return proc, f"http://127.0.0.1:{port}"


def report(hostile: dict[str, dict[str, dict]], speed: dict[str, list[dict]], baselines: dict[str, float],
           args: argparse.Namespace) -> str:
    names = list(baselines)
    lines = [
        "# KServe v2 JSON bodies at the upload limit",
        "",
        f"`benchmarks/serve_hostile.py` on {machine()}. Servers: "
        + "; ".join(f"**{n}** (RSS {baselines[n]:.0f} MB once ready)" for n in names)
        + f". Bodies of about {args.mb:g} MB (the upload limit), {args.clients} at once per kind, then 4 at once while "
        f"one client posts a small image to `/predict` every {PROBE_EVERY_S * 1000:.0f} ms; the servers take turns "
        "kind by kind. Peak RSS is the process's high-water mark so far (`VmHWM`).",
        "",
        "| body | MB | server | statuses | peak RSS (MB) | /predict meanwhile: n, p50, max (ms) |",
        "|---|---:|---|---|---:|---|",
    ]
    for kind, rows in hostile.items():
        for name, r in rows.items():
            lines.append(f"| {kind} | {r['mb']:.1f} | {name} | {', '.join(map(str, r['statuses']))} | "
                         f"{r['peak_rss_mb']:.0f} | {r['probe_n']}, {r['probe_p50_s'] * 1000:.0f}, "
                         f"{r['probe_max_s'] * 1000:.0f} |")
    lines += ["", f"Valid one-image JSON requests, 16 clients, {args.rounds} interleaved rounds of 5 s (median):", "",
              "| server | req/s | p50 (ms) | p99 (ms) |", "|---|---:|---:|---:|"]
    for name in names:
        rows = speed[name]
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        lines.append(f"| {name} | {med['rps']:.0f} | {med['p50'] * 1000:.1f} | {med['p99'] * 1000:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("export_dir", type=Path)
    p.add_argument("--mb", type=float, default=10.0, help="body size, and the servers' --max-upload-mb")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the valid-request throughput")
    p.add_argument("--against", help="the Python of another edgekd install, measured beside this tree's")
    p.add_argument("--against-label", default="baseline")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "serve-hostile.md")
    args = p.parse_args()
    model = json.loads((args.export_dir / "manifest.json").read_text())["model"]
    pythons = {"this tree": sys.executable, **({args.against_label: args.against} if args.against else {})}
    servers = {}
    try:
        for i, (name, python) in enumerate(pythons.items()):
            log = Path(tempfile.mkdtemp(prefix="edgekd-hostile-")) / f"serve-{i}.log"
            servers[name] = serve(python, args.export_dir, log, "--max-upload-mb", f"{args.mb:g}")
        url = next(iter(servers.values()))[1]
        tensor = httpx.get(f"{url}/v2/models/{model}").json()["inputs"][0]
        bodies = hostile_bodies(int(args.mb * 1e6), tensor["name"], tensor["shape"][1:])
        baselines = {name: rss_mb(proc.pid) for name, (proc, _) in servers.items()}
        hostile = {kind: {name: hostile_row(url, proc.pid, model, body, args.clients)
                          for name, (proc, url) in servers.items()} for kind, body in bodies.items()}
        x = np.random.default_rng(1).standard_normal(tensor["shape"][1:])
        one = json.dumps({"inputs": [{**tensor, "shape": [1, *x.shape], "data": x.ravel().tolist()}]}).encode()
        speed: dict[str, list[dict]] = {name: [] for name in servers}
        for _ in range(args.rounds):
            for name, (_, url) in servers.items():
                speed[name].append(throughput(url, model, one))
    finally:
        for proc, _ in servers.values():
            stop(proc)
    text = report(hostile, speed, baselines, args)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
