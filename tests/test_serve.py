"""The HTTP server end to end: a real uvicorn on 127.0.0.1, a real HTTP client, the session's real export."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from conftest import wait_until_ready
from edgekd.contracts.manifest import load_manifest
from edgekd.contracts.preprocessing import PreprocessSpec
from edgekd.errors import EdgeKDError
from edgekd.runtimes import open_artifact, select_artifact
from edgekd.serve.app import create_app
from edgekd.serve.batching import MicroBatcher, QueueFull
from edgekd.serve.metrics import Metrics
from edgekd.serve.preprocess import ImageError, ImageTooLarge, Preprocessor, load_image, open_image, to_rgb


class LiveServer:
    """A uvicorn server on a free loopback port, in a background thread, for as long as the ``with`` lasts."""

    def __init__(self, app, **config) -> None:
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", **config))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


def png(img: Image.Image, **opts) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **opts)
    return buf.getvalue()


def jpeg(img: Image.Image, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus exposition text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(name + ("{" + want + "}" if want else " ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture(scope="module")
def heldout():
    """The digits held-out split as (RGB PIL image, label) pairs: what the export scored its artifacts on."""
    from edgekd.data import build_data

    bundle = build_data("digits")
    return [bundle.raw_val[i] for i in range(len(bundle.raw_val))]


@pytest.fixture(scope="module")
def server(export_dir: Path):
    with LiveServer(create_app(export_dir, max_batch=8, batch_timeout_ms=5.0)) as live:
        yield live


@pytest.fixture(scope="module")
def strict_server(export_dir: Path):
    """API key, 50 kB upload limit, 100k pixel limit, one-slot queue: the limits' failure paths."""
    app = create_app(export_dir, api_key="s3cret-key", max_upload_mb=0.05, max_pixels=100_000, queue_size=1,
                     max_batch=1)
    with LiveServer(app) as live:
        yield live


KEY = {"X-API-Key": "s3cret-key"}


# ------------------------------------------------------------------------------------ preprocessing


def test_preprocess_matches_the_torchvision_eval_transform(export_dir: Path):
    from edgekd.data import make_eval_transform

    manifest = load_manifest(export_dir)
    pre = Preprocessor.from_manifest(manifest)
    p = manifest["preprocessing"]
    reference = make_eval_transform(pre.spec)
    rng = np.random.default_rng(0)
    for h, w in [(8, 8), (32, 32), (45, 19), (300, 200)]:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        ours = pre(png(img))
        assert ours.dtype == np.float32 and ours.shape == (3, *p["resize"])
        np.testing.assert_array_equal(ours, reference(img).numpy())
    # distinct statistics per channel, BGR order: the model's channel c (blue first) gets mean[c] and std[c]
    mean, std = [0.1, 0.5, 0.9], [0.2, 0.3, 0.4]
    bgr = Preprocessor.from_manifest(
        {**manifest, "preprocessing": {**p, "mean": mean, "std": std, "channel_order": "BGR"}})
    img = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    swapped = Image.fromarray(np.ascontiguousarray(np.asarray(img)[..., ::-1]))
    rgb_spec = PreprocessSpec(tuple(p["resize"]), tuple(mean), tuple(std))
    np.testing.assert_array_equal(bgr(png(img)), make_eval_transform(rgb_spec)(swapped).numpy())


def test_every_image_mode_becomes_the_rgb_training_would_see():
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    as_rgb = np.asarray(Image.fromarray(grey).convert("RGB"))
    # 16-bit greyscale is scaled (v / 257), not clipped at 255 as Pillow's convert does
    sixteen = Image.fromarray(grey.astype(np.uint16) * 257)
    assert sixteen.mode == "I;16"
    np.testing.assert_array_equal(np.asarray(to_rgb(load_image(open_image(png(sixteen))))), as_rgb)
    np.testing.assert_array_equal(np.asarray(to_rgb(Image.fromarray(grey.astype(np.int32) * 257, "I"))), as_rgb)
    np.testing.assert_array_equal(np.asarray(to_rgb(Image.fromarray(grey.astype(np.float32) / 255, "F"))), as_rgb)
    for mode in ("L", "1", "P", "CMYK"):
        img = Image.fromarray(grey).convert(mode)
        np.testing.assert_array_equal(np.asarray(to_rgb(img)), np.asarray(img.convert("RGB")))
    # transparency is composited on white: a fully transparent pixel is white whatever colour it holds
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 0)
    rgba[0, 1] = (10, 20, 30, 255)
    rgba[1, 0] = (0, 0, 0, 128)
    out = np.asarray(to_rgb(load_image(open_image(png(Image.fromarray(rgba, "RGBA"))))))
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 1].tolist() == [10, 20, 30]
    assert 125 <= out[1, 0, 0] <= 129
    assert np.asarray(to_rgb(Image.fromarray(rgba, "RGBA").convert("LA")))[0, 0].tolist() == [255, 255, 255]
    palette = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    palette.putpalette([0, 0, 0, 200, 0, 0])
    palette.info["transparency"] = 0
    assert np.asarray(to_rgb(load_image(open_image(png(palette))))).tolist() == [[[255, 255, 255], [200, 0, 0]]]


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 10), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes())
    assert load_image(open_image(buf.getvalue())).size == (10, 40)


def test_decoding_rejects_empty_corrupt_truncated_and_bombs():
    good = png(Image.new("RGB", (64, 64), (1, 2, 3)))
    for bad in (b"", b"not an image at all", good[: len(good) // 2], b"\x89PNG\r\n\x1a\n" + b"\0" * 50):
        with pytest.raises(ImageError) as err:
            load_image(open_image(bad))
        assert err.value.status_code == 400
    with pytest.raises(ImageTooLarge) as err:
        open_image(png(Image.new("L", (2000, 2000))), max_pixels=1_000_000)
    assert err.value.status_code == 413
    small = png(Image.new("L", (8, 8)))  # IHDR rewritten to 20000 x 20000: past Pillow's own limit, which errors first
    ihdr = b"IHDR" + struct.pack(">II", 20_000, 20_000) + small[24:29]
    huge = small[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + small[33:]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no DecompressionBombWarning on the way
        with pytest.raises(ImageTooLarge, match="400000000 pixels.*at most 25000000 pixels"):
            open_image(huge, max_pixels=25_000_000)


def test_the_header_alone_refuses_a_bomb_and_truncation_shows_only_when_decoding():
    noise = np.random.default_rng(2).integers(0, 256, (1100, 1000), dtype=np.uint8)
    data = png(Image.fromarray(noise))
    with pytest.raises(ImageTooLarge):
        open_image(data[:100], max_pixels=1_000_000)  # 100 bytes hold the size: nothing else is read
    half = open_image(data[: len(data) // 2])
    assert half.size == (1000, 1100)
    with pytest.raises(ImageError, match="truncated"):
        load_image(half)


# ------------------------------------------------------------------------------------ predictions


def test_heldout_accuracy_over_http_equals_the_manifest(server: LiveServer, export_dir: Path, heldout):
    manifest = load_manifest(export_dir)
    key = select_artifact(manifest)
    bodies = [png(img) for img, _ in heldout]
    with httpx.Client(base_url=server.url, timeout=60) as client:

        def top1(body: bytes) -> int:
            r = client.post("/predict", params={"top_k": 1}, files={"file": ("digit.png", body, "image/png")})
            assert r.status_code == 200, r.text
            return r.json()["predictions"][0]["index"]

        with ThreadPoolExecutor(4) as pool:
            predicted = list(pool.map(top1, bodies))
        accuracy = float(np.mean([p == label for p, (_, label) in zip(predicted, heldout)]))
        assert accuracy == manifest["artifacts"][key]["accuracy"]

        r = client.post("/predict", files={"file": ("digit.jpg", jpeg(heldout[0][0].resize((64, 64))), "image/jpeg")})
        body = r.json()
        assert r.status_code == 200 and body["model"] == manifest["model"] and len(body["predictions"]) == 5
        scores = [p["score"] for p in body["predictions"]]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0 + 1e-9
        assert all(p["label"] == manifest["class_names"][p["index"]] for p in body["predictions"])
        assert body["latency_ms"] > 0


def test_png_and_jpeg_digits_are_classified_correctly(server: LiveServer, export_dir: Path, heldout):
    manifest = load_manifest(export_dir)
    accuracy = manifest["artifacts"][select_artifact(manifest)]["accuracy"]
    sample = heldout[:60]
    answers = {}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for encode, kind in ((png, "image/png"), (jpeg, "image/jpeg")):
            answers[kind] = []
            for img, _ in sample:
                r = client.post("/predict", files={"file": ("d", encode(img), kind)})
                answers[kind].append(r.json()["predictions"][0]["index"])
    labels = [label for _, label in sample]
    right = {kind: float(np.mean([a == y for a, y in zip(found, labels)])) for kind, found in answers.items()}
    assert right["image/png"] >= max(0.5, accuracy - 0.15), right
    assert right["image/jpeg"] >= max(0.5, accuracy - 0.2), right
    agree = np.mean([a == b for a, b in zip(answers["image/png"], answers["image/jpeg"])])
    assert agree >= 0.8, agree


def test_kserve_v2_infer_and_metadata(server: LiveServer, export_dir: Path, heldout):
    manifest = load_manifest(export_dir)
    name, key = manifest["model"], select_artifact(manifest)
    pre = Preprocessor.from_manifest(manifest)
    x = np.stack([pre(png(img)) for img, _ in heldout[:3]])
    with httpx.Client(base_url=server.url, timeout=60) as client:
        meta = client.get(f"/v2/models/{name}").json()
        assert meta["name"] == name and meta["versions"] == [key] and meta["platform"] == "onnxruntime_onnx"
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 32, 32]}]
        assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, manifest["num_classes"]]}]
        request = {"id": "r1", "inputs": [
            {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
        r = client.post(f"/v2/models/{name}/infer", json=request)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["model_name"] == name and out["id"] == "r1"
        logits = np.asarray(out["outputs"][0]["data"], np.float32).reshape(out["outputs"][0]["shape"])
        assert logits.shape == (3, manifest["num_classes"])
        single = [client.post("/predict", params={"top_k": 1}, files={"file": ("d.png", png(img), "image/png")}).json()
                  for img, _ in heldout[:3]]
        assert logits.argmax(1).tolist() == [s["predictions"][0]["index"] for s in single]
        nested = client.post(f"/v2/models/{name}/infer",
                             json={"inputs": [{**request["inputs"][0], "data": x.tolist()}]})
        # the protocol's nested form gives the same answer as the flat one
        assert nested.status_code == 200, nested.text
        assert nested.json()["outputs"] == out["outputs"]

        def infer(**change):
            tensor = {**request["inputs"][0], **change}
            return client.post(f"/v2/models/{name}/infer", json={"inputs": [tensor]})

        for r in (infer(name="pixels"), infer(datatype="INT8"), infer(shape=[3, 3, 32, 31]), infer(data=[0.0] * 10),
                  infer(shape=[3, 3, 32])):
            assert r.status_code == 400 and isinstance(r.json()["detail"], str), r.text
        assert infer(data="zeros").status_code == 422
        ragged = x.tolist()
        ragged[2][1].pop()
        r = infer(data=ragged)
        assert r.status_code == 422 and "nested as shape [3, 3]" in r.text, r.text
        assert "nested as shape [3, 3, 32, 32], not [1, 9, 32, 32]" in infer(shape=[1, 9, 32, 32], data=x.tolist()).text
        bad_leaf = x.tolist()
        bad_leaf[1][2][3][4] = "0.5"
        r = infer(data=bad_leaf)  # located by its index in the flattened data
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == [
            "body", "inputs", 0, "data", int(np.ravel_multi_index((1, 2, 3, 4), x.shape))], r.text
        for bad in ([True] * x.size, ["0.5"] * x.size):  # not JSON numbers, though Python would coerce them
            assert infer(data=bad).status_code == 422
        start = time.perf_counter()
        r = infer(data=[None] * 1_000_000)  # more values than this model's largest request: refused unparsed
        assert r.status_code == 400 and "more than this model's largest request" in r.json()["error"], r.text
        assert len(r.content) < 1000 and time.perf_counter() - start < 5
        r = infer(data=[None] * x.size)  # every element wrong: one error, no echo of the input
        assert r.status_code == 422 and len(r.content) < 1000, (len(r.content), r.content[:300])
        assert r.json()["detail"] == [
            {"loc": ["body", "inputs", 0, "data", 0], "msg": "Input should be a valid number", "type": "float_type"}]
        # the protocol's error string
        assert r.json()["error"] == "body.inputs.0.data.0: Input should be a valid number"
        assert client.post(f"/v2/models/{name}/infer", json={"inputs": []}).status_code == 422
        assert client.post(f"/v2/models/{name}/infer", content=b"{not json",
                           headers={"content-type": "application/json"}).status_code == 422
        r = client.post("/v2/models/other/infer", json=request)
        assert (r.status_code == 404
                and r.json()["error"] == r.json()["detail"] == f"unknown model 'other'; this server serves {name!r}")
        assert client.get("/v2/models/other").status_code == 404
        # outside /v2: FastAPI's {"detail": ...} alone
        assert "error" not in client.post("/predict", params={"top_k": 0}).json()
        assert client.get("/v2/health/live").json() == {"live": True}
        assert client.get("/v2/health/ready").json() == {"ready": True}
        assert client.get("/docs").status_code == 200
        spec = client.get("/openapi.json").json()
        # a Starlette route, documented by hand: check the document is whole
        predict = spec["paths"]["/predict"]["post"]
        assert "multipart/form-data" in predict["requestBody"]["content"]
        assert [p["name"] for p in predict["parameters"]] == ["top_k"]
        assert predict["responses"]["200"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/PredictResponse"}
        assert set(predict["responses"]) == {"200", "400", "401", "413", "415", "422", "503"}
        infer_body = (
            spec["paths"]["/v2/models/{name}/infer"]["post"]["requestBody"]["content"]["application/json"]["schema"])
        assert infer_body == {"$ref": "#/components/schemas/InferRequest"}
        schemas = spec["components"]["schemas"]
        assert schemas["PredictResponse"]["properties"]["predictions"]["items"] == {
            "$ref": "#/components/schemas/Prediction"}
        assert "ErrorResponse" in schemas
        assert schemas["InferRequest"]["properties"]["inputs"]["items"] == {
            "$ref": "#/components/schemas/InferInputTensor"}
        assert "data" in schemas["InferInputTensor"]["properties"]
        text = client.get("/metrics").text
        for path in ("/docs", "/openapi.json"):  # plain Starlette routes: counted under their path, not "unmatched"
            assert metric(text, "edgekd_requests_total", endpoint=path, method="GET", status="200") >= 1


# ------------------------------------------------------------------------------------ bad input


def test_bad_input_gets_the_right_status_never_a_500(server: LiveServer, heldout):
    good = png(heldout[0][0])
    truncated_jpeg = jpeg(Image.new("RGB", (300, 300), (30, 60, 90)))[:400]
    cases = [
        ({"files": {"file": ("a.png", b"", "image/png")}}, 400),
        ({"files": {"file": ("a.png", b"GIF89a but not really", "image/png")}}, 400),
        ({"files": {"file": ("a.png", good[: len(good) // 2], "image/png")}}, 400),
        ({"files": {"file": ("a.jpg", truncated_jpeg, "image/jpeg")}}, 400),
        ({"files": {"file": ("a.bin", b"\x00" * 1000, "application/octet-stream")}}, 400),
        ({"files": {"file": ("notes.txt", b"hello", "text/plain")}}, 415),
        ({"files": {"other": ("a.png", good, "image/png")}}, 422),
        ({"data": {"file": "just text"}, "files": {"other": ("a.png", good, "image/png")}}, 422),
        ({"data": {"file": "url-encoded form"}}, 415),
        ({"json": {"file": "x"}}, 415),
        ({"content": good, "headers": {"content-type": "image/png"}}, 415),
        ({"files": [("file", ("a.png", good, "image/png")), ("file", ("b.png", good, "image/png"))]}, 422),
        ({"files": {"file": ("a.png", good, "image/png"), "other": ("b.png", good, "image/png")}}, 422),
        ({"data": {f"f{i}": "x" for i in range(20)}, "files": {"file": ("a.png", good, "image/png")}}, 422),
        ({"files": {"file": ("a.png", good, "image/png")}, "params": {"top_k": 0}}, 422),
        ({"files": {"file": ("a.png", good, "image/png")}, "params": {"top_k": 11}}, 422),
        ({"files": {"file": ("a.png", good, "image/png")}, "params": {"top_k": "many"}}, 422),
        ({"content": b"--x\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nno closing",
          "headers": {"content-type": "multipart/form-data; boundary=x"}}, 422),
    ]
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for kwargs, status in cases:
            r = client.post("/predict", **kwargs)
            assert r.status_code == status, (kwargs.get("files") or kwargs, r.status_code, r.text)
            assert "detail" in r.json()
        r = client.post("/predict", data={"file": "just text"}, files={"other": ("a.png", good, "image/png")})
        assert "not a file" in r.json()["detail"]  # a part without a filename is there, but text
        assert client.post("/predict", files={"file": ("a.png", good, "image/png")}).status_code == 200
        assert metric(client.get("/metrics").text, "edgekd_requests_total", endpoint="/predict", method="POST",
                      status="500") == 0


def test_a_client_that_hangs_up_mid_upload_is_counted_499_without_a_logged_error(server: LiveServer):
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = records.append
    loggers = [logging.getLogger(name) for name in ("uvicorn.error", "edgekd.serve")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            before = metric(client.get("/metrics").text, "edgekd_requests_total", endpoint="/predict", method="POST",
                            status="499")
            port = int(server.url.rsplit(":", 1)[1])
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(
                    b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                    b"Content-Length: 100000\r\n\r\n"
                    b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
                    b"Content-Type: image/png\r\n\r\n" + b"\0" * 1000
                )
                time.sleep(0.2)  # the server is reading the body when the client goes
            deadline = time.monotonic() + 10
            while (after := metric(client.get("/metrics").text, "edgekd_requests_total", endpoint="/predict",
                                   method="POST", status="499")) == before:
                assert time.monotonic() < deadline, "the hang-up was never counted"
                time.sleep(0.05)
            text = client.get("/metrics").text
        assert after == before + 1
        assert metric(text, "edgekd_requests_total", endpoint="/predict", method="POST", status="500") == 0
        assert records == []
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def _answer(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when it closed it."""
    sock.settimeout(10)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data, time.monotonic()


def test_slow_and_oversized_requests_are_cut_off_while_others_are_served(export_dir: Path):
    from edgekd.serve.protocol import guarded_protocol

    app = create_app(export_dir, max_batch=1)
    with LiveServer(app, http=guarded_protocol(header_timeout_s=1.0, body_timeout_s=1.5, max_header_kb=16)) as live:
        port = int(live.url.rsplit(":", 1)[1])
        stalls = {
            "silent": b"",
            "headers": b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n",
            "body": b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                    b"Content-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; "
                    b"filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n" + b"\0" * 1000,
        }
        socks = {}
        started = time.monotonic()
        for name, data in stalls.items():
            socks[name] = socket.create_connection(("127.0.0.1", port))
            socks[name].sendall(data)
        with httpx.Client(base_url=live.url, timeout=10) as client:  # meanwhile every other client is served
            image = png(Image.new("RGB", (8, 8), (200, 200, 200)))
            for _ in range(5):
                assert client.post("/predict", files={"file": ("a.png", image, "image/png")}).status_code == 200
        answers = {name: _answer(sock) for name, sock in socks.items()}
        for name, (data, closed) in answers.items():
            limit = 1.5 if name == "body" else 1.0
            assert data.startswith(b"HTTP/1.1 408 "), (name, data[:80])
            assert limit - 0.05 <= closed - started <= limit + 1.5, (name, closed - started)
        assert b"the request body did not arrive within 1.5 s" in answers["body"][0]
        with socket.create_connection(("127.0.0.1", port)) as sock:  # 20 kB of headers against a 16 kB limit
            sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
            data, _ = _answer(sock)
            assert data.startswith(b"HTTP/1.1 431 ") and data.endswith(b"exceed 16 KB")
        with socket.create_connection(("127.0.0.1", port)) as sock:  # a header that never ends, streamed in 4 kB reads
            sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Big: ")
            with contextlib.suppress(OSError):  # the server may close while the client still writes
                for _ in range(8):
                    sock.sendall(b"a" * 4096)
                    time.sleep(0.02)
            data, closed = _answer(sock)
            assert data.startswith(b"HTTP/1.1 431 ") and closed - started < 30
        with socket.create_connection(("127.0.0.1", port)) as sock:  # 12 kB is within it
            sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: " + b"a" * 12_000 + b"\r\n\r\n")
            assert _answer(sock)[0].startswith(b"HTTP/1.1 200 ")
        for sock in socks.values():
            sock.close()


def test_size_limits_answer_413_while_reading(strict_server: LiveServer):
    big_noise = png(Image.fromarray(np.random.default_rng(2).integers(0, 256, (160, 160, 3), dtype=np.uint8)))
    assert len(big_noise) > 50_000 * 1.05
    bomb = png(Image.new("L", (1000, 1000)))  # 1 MP of zeros: a few kB on the wire
    assert len(bomb) < 10_000
    with httpx.Client(base_url=strict_server.url, timeout=60, headers=KEY) as client:
        r = client.post("/predict", files={"file": ("big.png", big_noise, "image/png")})
        assert r.status_code == 413 and "detail" in r.json()
        r = client.post("/predict", files={"file": ("bomb.png", bomb, "image/png")})
        assert r.status_code == 413 and "pixels" in r.json()["detail"]
        small = png(Image.new("L", (8, 8), 50))
        for size, status in ((50_000, 200), (50_001, 413)):  # 0.05 MB is 50,000 bytes (SI, as every size edgekd prints)
            r = client.post("/predict", files={"file": ("pad.png", small + b"\0" * (size - len(small)), "image/png")})
            assert r.status_code == status, (size, r.text)

        def chunks():  # no Content-Length: the server must stop at the cap while the body streams in
            yield (b'--abc\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
                   b"Content-Type: image/png\r\n\r\n")
            for _ in range(40):
                yield b"\0" * 4096

        r = client.post("/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=abc"})
        assert r.status_code == 413
        small = png(Image.new("RGB", (20, 20), (9, 9, 9)))
        assert client.post("/predict", files={"file": ("ok.png", small, "image/png")}).status_code == 200


def test_api_key(strict_server: LiveServer):
    body = {"file": ("d.png", png(Image.new("L", (8, 8), 50)), "image/png")}
    with httpx.Client(base_url=strict_server.url, timeout=60) as client:
        for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-key"}):
            r = client.post("/predict", files=body, headers=headers)
            assert (r.status_code == 401 and "API key" in r.json()["detail"]
                    and r.headers["www-authenticate"] == "Bearer")
        # before the body
        assert client.post("/predict", content=b"x", headers={"content-type": "text/plain"}).status_code == 401
        assert client.post("/predict?top_k=0", files=body).status_code == 401
        assert client.get("/metrics").status_code == 401
        assert client.get("/v2/models/x").status_code == 401
        assert client.get("/v2").json()["error"].startswith("missing or wrong API key")  # the server metadata route too
        for content in (b"{not json", b'{"inputs": []}'):  # the key is checked before the body is parsed
            r = client.post("/v2/models/x/infer", content=content, headers={"content-type": "application/json"})
            assert r.status_code == 401, r.text
        assert client.post("/predict", files=body, headers={"Authorization": "Bearer s3cret-key"}).status_code == 200
        assert client.post("/predict", files=body, headers=KEY).status_code == 200
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").status_code == 200
        assert client.get("/metrics", headers=KEY).status_code == 200
        assert client.get("/openapi.json").status_code == 401  # the API docs are behind the key too
        security = client.get("/openapi.json", headers=KEY).json()["paths"]["/predict"]["post"]["security"]
        assert {name for scheme in security for name in scheme} == {"HTTPBearer", "APIKeyHeader"}


def test_full_queue_answers_503_with_retry_after(strict_server: LiveServer):
    runtime = strict_server.app.state.serve.runtime
    real_run = runtime.run
    runtime.run = lambda batch: (time.sleep(0.3), real_run(batch))[1]
    body = png(Image.new("L", (8, 8), 50))
    try:
        with httpx.Client(base_url=strict_server.url, timeout=60, headers=KEY) as client:
            with ThreadPoolExecutor(6) as pool:
                answers = list(pool.map(lambda _: client.post("/predict", files={"file": ("d.png", body, "image/png")}),
                                        range(6)))
    finally:
        del runtime.run
    codes = sorted(r.status_code for r in answers)
    assert 503 in codes and 200 in codes and set(codes) <= {200, 503}
    busy = next(r for r in answers if r.status_code == 503)
    assert busy.headers["retry-after"] == "1" and "busy" in busy.json()["detail"]


def test_model_ready_route_and_the_infer_routes_404_400_and_503(strict_server: LiveServer, export_dir: Path):
    name = load_manifest(export_dir)["model"]
    tensor = {"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [0.0] * 3072}
    with httpx.Client(base_url=strict_server.url, timeout=60, headers=KEY) as client:
        assert client.get(f"/v2/models/{name}/ready").json() == {"name": name, "ready": True}
        assert client.get(f"/v2/models/{name}/ready", headers={"X-API-Key": "wrong"}).status_code == 401
        missing = client.get("/v2/models/other/ready")
        assert missing.status_code == 404 and "unknown model 'other'" in missing.json()["error"]
        r = client.post(f"/v2/models/{name}/infer", json={"inputs": [tensor], "outputs": [{"name": "probs"}]})
        assert r.status_code == 400 and r.json()["error"] == "unknown output 'probs'; this model's output is 'logits'"
        runtime = strict_server.app.state.serve.runtime  # one queue slot, one slow batch: the next ones wait or 503
        real_run = runtime.run
        runtime.run = lambda batch: (time.sleep(0.3), real_run(batch))[1]
        try:
            with ThreadPoolExecutor(6) as pool:
                answers = list(pool.map(lambda _: client.post(f"/v2/models/{name}/infer", json={"inputs": [tensor]}),
                                        range(6)))
        finally:
            del runtime.run
    codes = sorted(r.status_code for r in answers)
    assert 503 in codes and 200 in codes and set(codes) <= {200, 503}, codes
    busy = next(r for r in answers if r.status_code == 503)
    assert busy.headers["retry-after"] == "1" and busy.json()["error"].startswith("server busy")


@pytest.mark.parametrize("key, message", [("", "the API key is empty"), ("  ", "the API key is empty"),
                                          ("schlüssel", "the API key must be ASCII")])
def test_an_empty_or_non_ascii_api_key_is_a_one_line_error(export_dir: Path, monkeypatch, capsys, key, message):
    from conftest import run_cli

    monkeypatch.setenv("EDGEKD_API_KEY", key)  # the environment's key, checked as --api-key is
    code, _, err = run_cli(monkeypatch, capsys, "serve", str(export_dir), "--port", "0")
    assert code == 2 and err.startswith(f"error: {message}") and len(err.strip().splitlines()) == 1, err


def test_the_api_key_can_come_from_the_environment(export_dir: Path, tmp_path: Path, monkeypatch):
    from serve_hostile import serve
    from serve_load import stop

    monkeypatch.setenv("EDGEKD_API_KEY", "from-env")
    proc, url = serve(sys.executable, export_dir, tmp_path / "serve.log")
    try:
        body = {"file": ("d.png", png(Image.new("L", (8, 8), 50)), "image/png")}
        assert httpx.post(f"{url}/predict", files=body).status_code == 401
        assert httpx.post(f"{url}/predict", files=body, headers={"X-API-Key": "from-env"}).status_code == 200
    finally:
        stop(proc)


# ------------------------------------------------------------------------------------ metrics and batching


def test_concurrent_requests_are_batched_and_counted(server: LiveServer, heldout):
    bodies = [png(img) for img, _ in heldout[:48]]
    with httpx.Client(base_url=server.url, timeout=60) as client:
        before = client.get("/metrics").text
        with ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(
                lambda b: client.post("/predict", files={"file": ("d.png", b, "image/png")}).status_code, bodies))
        after = client.get("/metrics").text
    assert codes == [200] * len(bodies)
    ok = dict(endpoint="/predict", method="POST", status="200")
    assert metric(after, "edgekd_requests_total", **ok) - metric(before, "edgekd_requests_total", **ok) == len(bodies)
    calls = metric(after, "edgekd_batch_size_count") - metric(before, "edgekd_batch_size_count")
    samples = metric(after, "edgekd_batch_size_sum") - metric(before, "edgekd_batch_size_sum")
    singles = metric(after, "edgekd_batch_size_bucket", le="1.0") - metric(before, "edgekd_batch_size_bucket", le="1.0")
    assert samples == len(bodies) and calls < len(bodies) and singles < calls  # some call held more than one image
    for name in ("edgekd_queue_wait_seconds_count", "edgekd_inference_latency_seconds_count"):
        assert metric(after, name) > metric(before, name)
    assert metric(after, "edgekd_request_latency_seconds_count", endpoint="/predict") >= len(bodies)
    assert metric(after, "edgekd_ready") == 1


def test_served_onnx_session_does_not_spin_between_calls(server: LiveServer, export_dir: Path):
    """Busy-waiting ORT threads would take the cores the event loop needs for HTTP; bench keeps ORT's default."""
    key = "session.intra_op.allow_spinning"
    served = server.app.state.serve.runtime.session.get_session_options()
    assert served.get_session_config_entry(key) == "0"
    manifest = load_manifest(export_dir)
    default = open_artifact(export_dir, manifest, "onnx-int8").session.get_session_options()
    with pytest.raises(RuntimeError, match="does not have configuration"):  # unset: ORT spins
        default.get_session_config_entry(key)


def test_batcher_fills_batches_and_bounds_its_queue():
    calls: list[int] = []

    def run(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        time.sleep(0.05)
        return batch.reshape(len(batch), -1)[:, :2] * 2

    async def scenario() -> None:
        batcher = MicroBatcher(run, max_batch=4, batch_timeout_ms=50, queue_size=8)
        batcher.start()
        try:
            xs = [np.full((1, 1, 1, 2), i, np.float32) for i in range(8)]
            outs = await asyncio.gather(*(batcher.submit(x) for x in xs))
            assert [o.tolist() for o in outs] == [[[2 * i, 2 * i]] for i in range(8)]
            assert sum(calls) == 8 and max(calls) == 4
            results = await asyncio.gather(*(batcher.submit(x) for x in xs * 2), return_exceptions=True)
            assert sum(isinstance(r, QueueFull) for r in results) >= 1
        finally:
            await batcher.stop()

    asyncio.run(scenario())


def test_batcher_never_runs_more_than_max_batch_samples_in_one_call():
    calls: list[int] = []
    metrics = Metrics()

    def run(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return batch.reshape(len(batch), -1)[:, :1] * 10

    async def scenario() -> None:
        batcher = MicroBatcher(run, max_batch=4, batch_timeout_ms=0, queue_size=8, metrics=metrics)
        batcher.start()
        try:
            out = await batcher.submit(np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1))
            assert out.ravel().tolist() == [10.0 * i for i in range(10)]
            assert calls == [4, 4, 2]
        finally:
            await batcher.stop()

    asyncio.run(scenario())
    samples = {s.name: s.value for m in metrics.registry.collect() for s in m.samples}
    assert samples["edgekd_batch_size_count"] == 3 and samples["edgekd_batch_size_sum"] == 10
    assert samples["edgekd_inference_latency_seconds_count"] == 3


def test_batcher_starts_the_next_batch_while_the_event_loop_is_busy():
    """Under load the loop is parsing HTTP; the inference thread must not wait for it to dispatch a batch."""
    calls: list[int] = []

    def run(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        time.sleep(0.01)
        return batch.reshape(len(batch), -1)[:, :1] + 1

    async def scenario() -> None:
        batcher = MicroBatcher(run, max_batch=2, batch_timeout_ms=0, queue_size=16)
        batcher.start()
        try:
            pending = [asyncio.ensure_future(batcher.submit(np.full((1, 1, 1, 1), i, np.float32))) for i in range(8)]
            await asyncio.sleep(0)  # every submit has queued its sample
            time.sleep(0.5)  # the loop is blocked, as by a burst of request parsing
            ran_while_blocked = sum(calls)
            outs = await asyncio.gather(*pending)
            assert [o.item() for o in outs] == [i + 1 for i in range(8)]
            assert ran_while_blocked == 8 and max(calls) == 2
        finally:
            await batcher.stop()

    asyncio.run(scenario())


def test_batcher_stop_finishes_the_batch_in_flight_and_fails_the_queued():
    started = threading.Event()

    def run(batch: np.ndarray) -> np.ndarray:
        started.set()
        time.sleep(0.2)
        if batch.min() < 0:
            raise RuntimeError("runtime failure")
        return batch.reshape(len(batch), -1)

    async def scenario() -> None:
        batcher = MicroBatcher(run, max_batch=1, batch_timeout_ms=0, queue_size=8)
        batcher.start()
        failing = await asyncio.gather(batcher.submit(np.full((1, 1, 1, 1), -1, np.float32)), return_exceptions=True)
        assert isinstance(failing[0], RuntimeError) and batcher.running  # a runtime error fails its requests only
        started.clear()
        first = asyncio.ensure_future(batcher.submit(np.ones((1, 1, 1, 1), np.float32)))
        await asyncio.to_thread(started.wait, 5)
        queued = asyncio.ensure_future(batcher.submit(np.ones((1, 1, 1, 1), np.float32)))
        await asyncio.sleep(0)
        await batcher.stop()
        assert (await first).tolist() == [[1.0]]
        with pytest.raises(QueueFull, match="shutting down"):
            await queued
        assert not batcher.running
        with pytest.raises(QueueFull, match="not loaded"):
            await batcher.submit(np.ones((1, 1, 1, 1), np.float32))

    asyncio.run(scenario())


def test_batcher_thread_exits_quietly_when_its_event_loop_is_gone(monkeypatch: pytest.MonkeyPatch):
    errors: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args.exc_value))

    def run(batch: np.ndarray) -> np.ndarray:
        time.sleep(0.2)
        return batch

    async def abandon() -> MicroBatcher:
        batcher = MicroBatcher(run)
        batcher.start()
        asyncio.ensure_future(batcher.submit(np.zeros((1, 1, 1, 1), np.float32)))
        await asyncio.sleep(0.05)  # the call is running when the loop closes, without stop()
        return batcher

    batcher = asyncio.run(abandon())
    batcher._thread.join(5)
    assert not batcher._thread.is_alive() and errors == []


# ------------------------------------------------------------------------------------ start-up


def test_not_ready_until_loaded_and_load_errors_are_one_line(export_dir: Path, tmp_path: Path):
    app = create_app(export_dir)

    async def before_startup() -> tuple[int, int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            ready = await client.get("/v2/health/ready")
            predict = await client.post("/predict", files={"file": ("a.png", png(Image.new("L", (8, 8))), "image/png")})
            return ready.status_code, predict.status_code

    assert asyncio.run(before_startup()) == (503, 503)
    tampered = tmp_path / "export"
    shutil.copytree(export_dir, tampered)
    manifest = load_manifest(tampered)
    target = tampered / manifest["artifacts"][select_artifact(manifest)]["files"][0]
    target.write_bytes(target.read_bytes()[:-1] + b"\0")
    with pytest.raises(EdgeKDError, match="sha256"):
        create_app(tampered).state.serve.load()
    with pytest.raises(EdgeKDError, match="no manifest.json"):
        create_app(tmp_path).state.serve.load()
    with pytest.raises(EdgeKDError, match="no artifact"):
        create_app(export_dir, runtime="ort", precision="fp16").state.serve.load()
    with pytest.raises(EdgeKDError, match="unknown runtime"):
        create_app(export_dir, runtime="tensorrt")


def _broken_copy(export_dir: Path, where: Path, change) -> Path:
    """A copy of the export whose manifest ``change(manifest)`` edited (or replaced, if it returns something)."""
    shutil.copytree(export_dir, where)
    manifest = json.loads((where / "manifest.json").read_text())
    replaced = change(manifest)
    (where / "manifest.json").write_text(json.dumps(manifest if replaced is None else replaced))
    return where


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m.update(num_classes=12, class_names=[str(i) for i in range(12)]), "logits of shape"),
        (lambda m: m.update(num_classes="x"), "num_classes 'x' does not match its 10 class_names"),
        (lambda m: m["input"].update(shape=[None, 3, -32, 32]), "needs 1-4 channels and sides of 1-4096 pixels"),
        (lambda m: m["input"].update(shape=[None, 3, 100000, 100000]), "sides of 1-4096 pixels"),
        (lambda m: m.update(eval="x"), "'eval' is not an object"),
        (lambda m: m["preprocessing"].update(mean=[0.5]), "three numbers each for mean and std"),
        (lambda m: m["preprocessing"].update(resize=[28, 28]), "cannot run on the input the manifest describes"),
        (lambda m: "manifest", "top level is str"),
        (lambda m: [], "top level is list"),
        (lambda m: m.update(artifacts=list(m["artifacts"])), "'artifacts' is list"),
        (lambda m: m["artifacts"]["onnx-int8"].pop("sha256") and None, "needs a 'sha256'"),
        (lambda m: m["artifacts"]["onnx-int8"].update(accuracy="high"), "has accuracy 'high', not a number"),
        (lambda m: m.update(input={}), "input shape None is not [batch, channels, height, width]"),
        (lambda m: m.update(artifacts={"tflite-int8": {**m["artifacts"]["onnx-int8"], "format": "tflite"}}),
         "no artifact this edgekd can run"),
    ],
)
def test_an_unservable_export_is_one_line_before_uvicorn_starts(export_dir: Path, tmp_path: Path, change, message: str):
    broken = _broken_copy(export_dir, tmp_path / "export", change)
    with pytest.raises(EdgeKDError, match=re.escape(message)):
        create_app(broken).state.serve.load()


def test_the_serve_command_reports_a_broken_export_in_one_line(export_dir: Path, tmp_path: Path):
    broken = _broken_copy(export_dir, tmp_path / "export", lambda m: m["preprocessing"].update(resize=[28, 28]))
    result = subprocess.run(
        [sys.executable, "-m", "edgekd.serve", str(broken), "--port", "0"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: artifact onnx-int8 cannot run on the input")


def test_openvino_artifact_serves_the_same_answers(export_dir: Path, heldout):
    manifest = load_manifest(export_dir)
    if "openvino-fp32" not in manifest["artifacts"]:
        pytest.fail("the session export has no openvino-fp32 artifact")
    answers = {}
    for runtime in ("ort", "openvino"):
        with (
            LiveServer(create_app(export_dir, runtime=runtime, precision="fp32")) as live,
            httpx.Client(base_url=live.url, timeout=60) as client,
        ):
            answers[runtime] = [
                client.post("/predict", params={"top_k": 1},
                            files={"file": ("d.png", png(img), "image/png")}).json()["predictions"][0]["index"]
                for img, _ in heldout[:20]
            ]
            platform = client.get(f"/v2/models/{manifest['model']}").json()["platform"]
            assert platform == {"ort": "onnxruntime_onnx", "openvino": "openvino_ir"}[runtime]
    assert answers["ort"] == answers["openvino"]


TORCH_BLOCKER = """
import importlib.abc, sys
class BlockTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch.") or name == "torchvision" or name.startswith("torchvision."):
            raise ImportError(f"torch is blocked in this test: {name}")
sys.meta_path.insert(0, BlockTorch())
sys.argv = ["edgekd.serve", *sys.argv[1:]]
import runpy
runpy.run_module("edgekd.serve", run_name="__main__")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_starts_and_answers_with_torch_unimportable(export_dir: Path, tmp_path: Path):
    port = free_port()
    script = tmp_path / "no_torch.py"
    script.write_text(TORCH_BLOCKER)
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(export_dir), "--port", str(port), "--api-key", "k"],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(proc, url, log, 90)
        r = httpx.post(f"{url}/predict", files={"file": ("d.png", png(Image.new("L", (8, 8), 80)), "image/png")},
                       headers={"X-API-Key": "k"}, timeout=30)
        assert r.status_code == 200 and len(r.json()["predictions"]) == 5
    finally:
        proc.terminate()
        proc.wait(30)
    text = log.read_text()
    assert "torch is blocked" not in text and re.search(r"ready: .* in \d+\.\d+ s", text), text


def test_a_port_in_use_or_a_bad_host_is_a_one_line_error(export_dir: Path):
    """uvicorn logs the bind error and exits 3; the server says why in one line instead (exit 2 from the CLI)."""
    import socket

    from edgekd.serve.server import run_server

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(EdgeKDError, match=f"cannot listen on 127.0.0.1:{port}: Address already in use"):
            run_server(export_dir, port=port)
    with pytest.raises(EdgeKDError, match="cannot listen on 999.1.1.1:"):
        run_server(export_dir, host="999.1.1.1", port=port)
    for size in (float("nan"), float("inf")):
        with pytest.raises(EdgeKDError, match=r"max_upload_mb > 0 \(finite\)"):
            run_server(export_dir, port=port, max_upload_mb=size)
