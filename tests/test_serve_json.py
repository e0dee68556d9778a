"""The KServe v2 infer route's JSON: the byte-count bound that refuses a body before it is parsed, and the route
fed random shapes, nestings, datatypes and element counts around every limit (hypothesis): a valid request gets
the model's logits, anything else a 4xx, never a 5xx."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from fastapi import HTTPException
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekd.contracts.manifest import load_manifest
from edgekd.runtimes import open_artifact, select_artifact
from edgekd.serve.app import create_app
from edgekd.serve.json_bounds import OTHER_VALUES, check_json_bounds, most_lists, upper_bounds
from edgekd.serve.v2 import INLINE_BODY, MAX_INFER_BATCH

SAMPLE = [3, 32, 32]  # the digits export's input sample
JSON_DOCS = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(alphabet="ab,[]{}: \"\\"),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(alphabet="x,[{"), inner, max_size=5),
    max_leaves=40,
)


def _counted(doc) -> tuple[int, int]:
    """The lists and values (containers included) that parsing ``doc`` builds."""
    if isinstance(doc, list):
        inner = [_counted(item) for item in doc]
        return 1 + sum(n for n, _ in inner), 1 + sum(v for _, v in inner)
    if isinstance(doc, dict):
        inner = [_counted(item) for item in doc.values()]
        return sum(n for n, _ in inner), 1 + sum(v for _, v in inner)
    return 0, 1


@settings(max_examples=300, deadline=None, database=None)
@given(JSON_DOCS, st.sampled_from([(",", ":"), (", ", ": "), (" ,\n", " :\t")]))
def test_the_byte_counts_bound_what_any_document_builds(doc, separators):
    lists, values = _counted(doc)
    bound_lists, bound_values = upper_bounds(json.dumps(doc, separators=separators).encode())
    assert bound_lists >= lists and bound_values >= values


def test_the_largest_valid_request_passes_and_one_more_value_or_list_does_not():
    assert most_lists([2, 3, 4]) == 1 + 2 + 6
    x = np.zeros([MAX_INFER_BATCH, *SAMPLE], np.float32)
    tensor = {"name": "input", "shape": list(x.shape), "datatype": "FP32"}
    for data in (x.ravel().tolist(), x.tolist()):
        check_json_bounds(json.dumps({"id": "a,b,[c]", "inputs": [{**tensor, "data": data}]}).encode(), SAMPLE,
                          MAX_INFER_BATCH)
    # past the bound by values (flat) and by lists (one-element lists): refused with the counts
    numbers = math.prod(x.shape) + most_lists(list(x.shape)) + OTHER_VALUES
    for data in ([0] * numbers, [[0]] * (most_lists(list(x.shape)) + OTHER_VALUES)):
        with pytest.raises(HTTPException) as refused:
            check_json_bounds(json.dumps({"inputs": [{**tensor, "data": data}]}).encode(), SAMPLE, MAX_INFER_BATCH)
        assert refused.value.status_code == 400 and "more than this model's largest request" in refused.value.detail


@pytest.fixture(scope="module")
def served(export_dir):
    """An in-process client of the digits export's app, and the model's own logits for a batch."""
    manifest = load_manifest(export_dir)
    runtime = open_artifact(export_dir, manifest, select_artifact(manifest), verify=False)
    with TestClient(create_app(export_dir, max_batch=8)) as client:
        yield client, manifest["model"], runtime


MUTATIONS = ("none", "padded", "nested", "shape", "datatype", "count", "ragged", "deeper", "element", "overflow",
             "name", "two inputs", "one-element lists", "output", "parameters")


@st.composite
def infer_requests(draw) -> tuple[str, bytes, np.ndarray]:
    """(mutation, body, x): a request for a batch ``x`` of random values, changed in one way."""
    n = draw(st.sampled_from([1, 2, 3, MAX_INFER_BATCH, MAX_INFER_BATCH + 1, 0]))
    x = np.random.default_rng(draw(st.integers(0, 2**16))).standard_normal((n, *SAMPLE)).astype(np.float32)
    mutation = draw(st.sampled_from(MUTATIONS))
    tensor = {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
    body = {"inputs": [tensor]}
    if mutation == "nested":
        tensor["data"] = x.tolist()
    elif mutation == "shape":
        tensor["shape"] = draw(st.lists(st.integers(-1, 70), max_size=6).filter(lambda shape: shape != list(x.shape)))
    elif mutation == "datatype":
        tensor["datatype"] = draw(st.sampled_from(["FP16", "INT8", "BYTES", "fp32", ""]))
    elif mutation == "count":
        k = draw(st.integers(1, 3073))
        tensor["data"] = tensor["data"][k:] if draw(st.booleans()) else tensor["data"] + [0.0] * k
    elif mutation == "ragged" and n:
        tensor["data"] = x.tolist()
        tensor["data"][draw(st.integers(0, n - 1))][draw(st.integers(0, 2))].pop()
    elif mutation == "deeper":
        tensor["data"] = [tensor["data"]] * draw(st.integers(1, 2))
    elif mutation == "element" and x.size:
        tensor["data"][draw(st.integers(0, x.size - 1))] = draw(st.sampled_from([None, True, "0.5", {}, [], [1.0]]))
    elif mutation == "overflow" and x.size:
        tensor["data"][draw(st.integers(0, x.size - 1))] = draw(st.sampled_from([1e39, -3.5e38, 1e308]))
    elif mutation == "name":
        tensor["name"] = draw(st.text(max_size=5).filter(lambda name: name != "input"))
    elif mutation == "two inputs":
        body["inputs"] = [tensor, tensor]
    elif mutation == "one-element lists":
        depth = draw(st.sampled_from([1, 4, 5, 100, 5000]))
        tensor["data"] = "@"
        return mutation, json.dumps(body).replace('"@"', "[" * depth + "0" + "]" * depth).encode(), x
    elif mutation == "output":
        body["outputs"] = [{"name": draw(st.sampled_from(["logits", "probs", ""]))}]
    elif mutation == "parameters":
        body["parameters"] = {"x": [[0]] * draw(st.sampled_from([10, 20_000]))}
    text = json.dumps(body)
    if mutation == "padded":  # whitespace past the inline size: the body is read and parsed in a decode thread
        text = text.replace('"inputs":', " " * (INLINE_BODY + 1) + '"inputs":')
    return mutation, text.encode(), x


@settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow,
                                                                                  HealthCheck.data_too_large])
@given(infer_requests())
def test_the_infer_route_answers_logits_or_a_4xx_never_a_5xx(served, request_parts):
    client, model, runtime = served
    mutation, body, x = request_parts
    r = client.post(f"/v2/models/{model}/infer", content=body, headers={"content-type": "application/json"})
    assert r.status_code < 500, (mutation, r.status_code, r.text[:300])
    valid = 1 <= len(x) <= MAX_INFER_BATCH and mutation in ("none", "padded", "nested", "output", "parameters")
    if mutation == "output":
        valid = valid and json.loads(body)["outputs"][0]["name"] == "logits"
    if mutation == "parameters":
        valid = valid and len(json.loads(body)["parameters"]["x"]) < OTHER_VALUES
    if not valid:
        assert r.status_code in (400, 422) and r.json()["error"], (mutation, r.status_code, r.text[:300])
        return
    assert r.status_code == 200, (mutation, r.text[:300])
    out = r.json()["outputs"][0]
    logits = np.asarray(out["data"], np.float32).reshape(out["shape"])
    np.testing.assert_allclose(logits, runtime.run(x), rtol=1e-4, atol=1e-4)
