"""The server's protocol surface against a real `python -m edgekd.serve` process: the Open Inference Protocol's binary
tensor data extension through tritonclient, the OpenAPI document's limits under schemathesis, and the API docs
served offline and behind the API key."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image

from edgekd.contracts.manifest import load_manifest
from edgekd.demo import running_server
from edgekd.runtimes import open_artifact, select_artifact
from edgekd.serve.preprocess import Preprocessor

KEY = "pr0tocol-key"
AUTH = {"X-API-Key": KEY}
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def live(export_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A keyed server process and the export's facts the tests check it against."""
    log = tmp_path_factory.mktemp("serve-protocol") / "serve.log"
    with running_server(export_dir, log, "--api-key", KEY) as url:
        yield url


@pytest.fixture(scope="module")
def digits(export_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Eight held-out digits preprocessed as the server would, and the served artifact's own logits for them."""
    from edgekd.data import build_data

    manifest = load_manifest(export_dir)
    pre = Preprocessor.from_manifest(manifest)
    bundle = build_data("digits")
    x = np.stack([pre(_png(bundle.raw_val[i][0])) for i in range(8)])
    runtime = open_artifact(export_dir, manifest, select_artifact(manifest), verify=False, threads=1)
    return x, runtime.run(x)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _model(export_dir: Path) -> str:
    return load_manifest(export_dir)["model"]


# ------------------------------------------------------------------------------------ binary tensor data extension


def test_tritonclient_json_and_binary_tensors_give_the_same_logits(live: str, export_dir: Path, digits):
    x, expected = digits
    client = triton.InferenceServerClient(live.removeprefix("http://"))
    assert "binary_tensor_data" in client.get_server_metadata(headers=AUTH)["extensions"]
    answers = {}
    for binary_in in (False, True):
        for binary_out in (False, True, None):  # None: no outputs named, which tritonclient asks for as binary
            tensor = triton.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=binary_in)
            outputs = None if binary_out is None else [triton.InferRequestedOutput("logits", binary_data=binary_out)]
            # a copy: tritonclient writes its Inference-Header-Content-Length into the dict it is given
            result = client.infer(_model(export_dir), [tensor], outputs=outputs, headers=dict(AUTH), request_id="r7")
            output = result.get_output("logits")
            assert ("binary_data_size" in output.get("parameters", {})) == (binary_out is not False)
            assert result.get_response()["id"] == "r7"
            answers[binary_in, binary_out] = result.as_numpy("logits")
    reference = answers[False, False]
    assert reference.shape == (8, load_manifest(export_dir)["num_classes"]) and reference.dtype == np.float32
    for key, logits in answers.items():
        np.testing.assert_array_equal(logits, reference, err_msg=str(key))  # the same float32 values either way
    np.testing.assert_allclose(reference, expected, rtol=1e-4, atol=1e-4)  # and the artifact's own
    assert reference.argmax(1).tolist() == expected.argmax(1).tolist()


def _binary_request(url: str, head: dict | bytes, tail: bytes, length: str | bytes | None = "auto") -> httpx.Response:
    raw = head if isinstance(head, bytes) else json.dumps(head).encode()
    headers = dict(AUTH)
    if length is not None:
        headers["Inference-Header-Content-Length"] = str(len(raw)) if length == "auto" else length
    return httpx.post(url, content=raw + tail, headers=headers)


def _binary_input(x: np.ndarray) -> dict:
    return {"name": "input", "shape": list(x.shape), "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}


def test_binary_response_on_the_wire(live: str, export_dir: Path, digits):
    """The extension's framing, byte for byte: the JSON's length in the header, then the logits as FP32 LE."""
    x, expected = digits
    url = f"{live}/v2/models/{_model(export_dir)}/infer"
    tensor, raw = _binary_input(x), x.astype("<f4").tobytes()
    r = _binary_request(url, {"inputs": [tensor], "parameters": {"binary_data_output": True}}, raw)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    n = int(r.headers["inference-header-content-length"])
    (output,) = json.loads(r.content[:n])["outputs"]
    assert output["shape"] == list(expected.shape) and output["datatype"] == "FP32" and "data" not in output
    assert output["parameters"]["binary_data_size"] == expected.size * 4 == len(r.content) - n
    logits = np.frombuffer(r.content[n:], "<f4").reshape(output["shape"])
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    # an output's own binary_data: false wins over the request's binary_data_output: true
    as_json = [{"name": "logits", "parameters": {"binary_data": False}}]
    r = _binary_request(url, {"inputs": [tensor], "outputs": as_json, "parameters": {"binary_data_output": True}}, raw)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text
    data = np.asarray(r.json()["outputs"][0]["data"], np.float32)
    np.testing.assert_array_equal(data.reshape(logits.shape), logits)


def test_malformed_binary_requests_are_one_clear_400_each(live: str, export_dir: Path):
    url = f"{live}/v2/models/{_model(export_dir)}/infer"
    x = np.zeros((2, 3, 32, 32), "<f4").tobytes()

    def tensor(size: int | None = len(x), **change) -> dict:
        params = {} if size is None else {"parameters": {"binary_data_size": size}}
        return {"inputs": [{"name": "input", "shape": [2, 3, 32, 32], "datatype": "FP32", **params, **change}]}

    half = len(x) // 2
    cases = [
        (tensor(len(x) - 4), x, "auto", "binary_data_size is 24572 bytes, but 24576 bytes follow the JSON"),
        (tensor(), x[:-4], "auto", "binary_data_size is 24576 bytes, but 24572 bytes follow the JSON"),
        (tensor(), x + b"\0" * 4, "auto", "but 24580 bytes follow the JSON"),
        (tensor(half, shape=[1, 3, 32, 32]), x[: half - 2], "auto", "binary_data_size is 12288 bytes, but 12286"),
        (tensor(half), x[:half], "auto", "shape [2, 3, 32, 32] is 24576 bytes of FP32 (4 each); binary_data_size is"),
        (tensor(datatype="FP16"), x, "auto", "datatype 'FP16' is not supported; send FP32"),
        (tensor(), x, "999999", "Inference-Header-Content-Length '999999' is not a length within the"),
        (tensor(), x, "0", "'0' is not a length"),
        (tensor(), x, "-5", "'-5' is not a length"),
        (tensor(), x, "\u00b2".encode("latin-1"), "is not a length"),  # a digit to str.isdigit(), not to int()
        (tensor(), x, "12", "the body's first 12 bytes (Inference-Header-Content-Length) are not one JSON object"),
        (tensor(), x, None, None),  # no length header: the whole body is read as JSON, which it is not (422, below)
        (tensor(data=[0.0] * 6144), x, "auto", "has both 'data' and parameters.binary_data_size"),
        (tensor(None, data=[0.0] * 6144), x, "auto", "24576 bytes follow the JSON, but no input has parameters."),
        (tensor(), np.full(6144, np.nan, "<f4").tobytes(), "auto", "input data must be finite float32 values"),
    ]
    for head, tail, length, message in cases:
        r = _binary_request(url, head, tail, length)
        if message is None:
            assert r.status_code == 422 and "Invalid JSON: trailing characters" in r.json()["error"], r.text
            continue
        assert r.status_code == 400, (message, r.status_code, r.text)
        assert message in r.json()["detail"] and r.json()["error"] == r.json()["detail"], r.text
    r = _binary_request(url, json.dumps(tensor()).encode(), b"", None)
    assert r.status_code == 400 and "the request has no Inference-Header-Content-Length header" in r.json()["detail"]
    for bad in (-1, 1.5, True, "8"):  # the extension's parameters keep their JSON types: a 422 like any field
        r = _binary_request(url, tensor(bad), x)
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["body", "inputs", 0, "parameters", "binary_data_size"]
    assert _binary_request(url, {**tensor(), "parameters": {"binary_data_output": "yes"}}, x).status_code == 422
    assert _binary_request(url, tensor(float(len(x))), x).status_code == 200  # 24576.0 is a JSON Schema integer
    metrics = httpx.get(f"{live}/metrics", headers=AUTH).text
    assert not re.search(r'edgekd_requests_total\{[^}]*status="5\d\d"', metrics), "a malformed request got a 5xx"


# ------------------------------------------------------------------------------------ the OpenAPI document's limits


def test_openapi_states_the_limits_the_server_enforces(live: str, export_dir: Path):
    manifest = load_manifest(export_dir)
    classes, name = manifest["num_classes"], manifest["model"]
    spec = httpx.get(f"{live}/openapi.json", headers=AUTH).json()
    top_k = spec["paths"]["/predict"]["post"]["parameters"][0]["schema"]
    assert (top_k["minimum"], top_k["maximum"]) == (1, classes)
    upload = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert "at most 10 MB and 25,000,000 pixels (413 above)" in upload["properties"]["file"]["description"]
    body = spec["paths"]["/v2/models/{name}/infer"]["post"]["requestBody"]
    assert f"At most {10_000_000 + 64 * 1024:,} bytes" in body["description"]
    assert "no more JSON values or lists than 64 samples" in body["description"]
    schemas = spec["components"]["schemas"]
    tensor = schemas["InferInputTensor"]["properties"]
    assert tensor["name"]["enum"] == ["input"] and tensor["datatype"]["enum"] == ["FP32"]
    batch = {"type": "integer", "minimum": 1, "maximum": 64}
    assert tensor["shape"]["prefixItems"] == [batch, {"const": 3}, {"const": 32}, {"const": 32}]
    assert tensor["shape"]["minItems"] == tensor["shape"]["maxItems"] == 4
    assert tensor["data"]["maxItems"] == 64 * 3 * 32 * 32
    assert tensor["data"]["items"]["maximum"] == float(np.finfo(np.float32).max)
    assert "null" not in json.dumps(tensor["data"])  # leave it out for binary data; null is no tensor
    size = schemas["InputParameters"]["properties"]["binary_data_size"]
    assert (size["type"], size["minimum"], size["maximum"]) == ("integer", 0, 64 * 3 * 32 * 32 * 4)
    assert schemas["InferRequest"]["properties"]["inputs"]["maxItems"] == 1
    assert schemas["RequestedOutput"]["properties"]["name"]["enum"] == ["logits"]
    example = body["content"]["application/json"]["example"]
    with httpx.Client(base_url=live, headers=AUTH, timeout=60) as client:
        # each stated bound is where the server's answer turns
        image = {"file": ("d.png", _png(Image.new("L", (8, 8), 90)), "image/png")}
        assert client.post("/predict", params={"top_k": classes}, files=image).status_code == 200
        assert client.post("/predict", params={"top_k": classes + 1}, files=image).status_code == 422
        assert client.post(f"/v2/models/{name}/infer", json=example).status_code == 200  # the document's example works
        for n, status in ((64, 200), (65, 400)):
            x = np.zeros((n, 3, 32, 32), "<f4")
            r = _binary_request(f"{live}/v2/models/{name}/infer", {"inputs": [_binary_input(x)]}, x.tobytes())
            assert r.status_code == status, r.text
        two = {"inputs": example["inputs"] * 2}
        assert client.post(f"/v2/models/{name}/infer", json=two).status_code == 400


def test_schemathesis_finds_no_failures(live: str, export_dir: Path, tmp_path: Path):
    """Every check schemathesis ships, on every operation, keyed: positive data must be accepted, negative data
    refused, every status, content type and body as documented, the key enforced (``ignored_auth``)."""
    schema = tmp_path / "openapi.json"
    schema.write_bytes(httpx.get(f"{live}/openapi.json", headers=AUTH).content)
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        f'[parameters]\n"path.name" = "{_model(export_dir)}"\n\n'
        f'[auth.openapi.APIKeyHeader]\napi_key = "{KEY}"\n\n'
        # What a schema cannot say, the server answers 400: an upload that is no image, data whose count is not
        # the product of `shape`. Schema-valid requests may get that; never a 422 (the schema's own rules).
        '[[operations]]\ninclude-path-regex = "^/predict$|/infer$"\n'
        'checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "404"]\n'
    )
    report = tmp_path / "report.json"
    cmd = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run", str(schema), "--url", live,
        "--checks", "all", "--max-examples", "25", "--seed", "1", "--workers", "1", "--generation-database", "none",
        "--no-color", "--report", "json", "--report-json-path", str(report),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=150, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-6000:]
    result = json.loads(report.read_text())
    assert result["failures"] == [] and result["errors"] == [] and result["complete"]
    assert result["operations"]["tested"] == result["operations"]["total"] == 8
    assert result["test_cases"]["generated"] > 300
    infer = result["valid_rates"]["POST /v2/models/{name}/infer"]
    assert sum(phase["accepted"] for phase in infer.values()) > 5  # past validation, into the model
    assert all(not names for names in result["warnings"].values()), result["warnings"]


# ------------------------------------------------------------------------------------ API docs


class _Assets(HTMLParser):
    """Every URL a page loads: <script src>, <link href>."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"script": "src", "link": "href"}.get(tag)
        self.urls += [value for key, value in attrs if key == wanted and value]


def test_docs_are_served_by_the_server_itself_and_need_the_key(live: str):
    with httpx.Client(base_url=live, timeout=30) as client:
        for path in ("/docs", "/redoc", "/openapi.json", "/docs/assets/swagger-ui-bundle.js"):
            r = client.get(path)
            assert r.status_code == 401 and "API key" in r.json()["detail"], (path, r.status_code)
        for path in ("/v2/health/live", "/v2/health/ready"):
            assert client.get(path).status_code == 200
        assert client.get("/openapi.json", headers=AUTH).json()["info"]["title"] == "edgekd serve"
        for page, expected in (("/docs", 3), ("/redoc", 2)):  # Swagger UI: css, favicon, js; ReDoc: favicon, js
            r = client.get(page, headers=AUTH)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
            assert not re.search(r"https?://", r.text), f"{page} names another host"  # no CDN, no web fonts
            parser = _Assets()
            parser.feed(r.text)
            assert len(parser.urls) == expected, parser.urls
            for url in parser.urls:
                assert url.startswith("/docs/assets/"), url
                asset = client.get(url, headers=AUTH)
                assert asset.status_code == 200 and len(asset.content) > 1000, (url, asset.status_code)
        js = client.get("/docs/assets/swagger-ui-bundle.js", headers=AUTH)
        assert "javascript" in js.headers["content-type"] and b"SwaggerUIBundle" in js.content
        assert client.get("/docs/assets/..%2Fcore.py", headers=AUTH).status_code == 404
        assert client.get("/docs/assets/missing.js", headers=AUTH).status_code == 404


def test_swagger_ui_renders_offline_in_a_browser(export_dir: Path, tmp_path: Path):
    """This machine has no route to a CDN: a page that needed one would render no operations."""
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing on CI: .ci/run must apt-get install chromium")
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium)")
    with running_server(export_dir, tmp_path / "serve.log") as url:  # no key: a browser cannot send the header
        cmd = [
            str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=15000", "--dump-dom", f"{url}/docs",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    paths = set(re.findall(r'data-path="([^"]+)"', dom))
    assert {"/predict", "/v2/models/{name}/infer", "/v2/health/ready"} <= paths, dom[-3000:]
    assert len(paths) == 8, paths
