"""The Open Inference Protocol's binary tensor data extension: a JSON header, then the tensors' raw bytes.

A request says how long its JSON is in the ``Inference-Header-Content-Length`` header; each binary input gives its
byte count in ``parameters.binary_data_size``, and the bytes follow the JSON in input order (little-endian, row
major). Outputs come back the same way when the request asks (``binary_data`` on an output, or
``binary_data_output`` for all), answered as ``application/octet-stream``. Every way the pieces can disagree is
one 400 that says which.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np
from fastapi import HTTPException
from fastapi.responses import Response

from edgekd.serve.schemas import InferInputTensor, InferRequest

HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSION = "binary_tensor_data"  # its name in the server metadata's ``extensions``
FP32 = np.dtype("<f4")
_LENGTH = re.compile(r"[0-9]{1,15}")  # ASCII digits only: str.isdigit() also admits '²', which int() refuses


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes | None]:
    """The JSON part of a request body and the binary part after it (None: no length header, all JSON)."""
    if header_length is None:
        return body, None
    if not _LENGTH.fullmatch(header_length) or not 0 < int(header_length) <= len(body):
        raise HTTPException(400, f"{HEADER_LENGTH} {header_length!r} is not a length within the {len(body)}-byte body")
    n = int(header_length)
    return body[:n], body[n:]


def binary_values(tensor: InferInputTensor, tail: bytes | None) -> np.ndarray | None:
    """The tensor's values from the bytes after the JSON; None when they are in ``data`` (then no bytes may follow)."""
    size = tensor.binary_data_size
    if size is None:
        if tail:
            raise HTTPException(400, f"{len(tail)} bytes follow the JSON, but no input has parameters.binary_data_size")
        return None
    name = tensor.name
    if tensor.data is not None:
        raise HTTPException(400, f"input {name!r} has both 'data' and parameters.binary_data_size; send them once")
    if tail is None:
        raise HTTPException(400, f"input {name!r} has binary_data_size, but the request has no {HEADER_LENGTH} header")
    if size != len(tail):
        raise HTTPException(400, f"binary_data_size is {size} bytes, but {len(tail)} bytes follow the JSON")
    needed = math.prod(tensor.shape) * FP32.itemsize
    if size != needed:
        raise HTTPException(400, f"shape {tensor.shape} is {needed} bytes of FP32 (4 each); binary_data_size is {size}")
    return np.frombuffer(tail, FP32).astype(np.float32).reshape(tensor.shape)


def wants_binary(body: InferRequest, output: str) -> bool:
    """Whether ``output`` goes back as binary: its own ``binary_data`` if given, else ``binary_data_output``."""
    for requested in body.outputs or []:
        if requested.name == output and requested.parameters and requested.parameters.binary_data is not None:
            return requested.parameters.binary_data
    return bool(body.parameters and body.parameters.binary_data_output)


def binary_response(header: dict[str, Any], name: str, values: np.ndarray) -> Response:
    """The JSON response with ``name``'s values as FP32 bytes after it instead of in ``data``."""
    raw = values.astype(FP32).tobytes()
    output = {"name": name, "shape": list(values.shape), "datatype": "FP32",
              "parameters": {"binary_data_size": len(raw)}}
    head = json.dumps({**header, "outputs": [output]}, separators=(",", ":")).encode()
    return Response(head + raw, media_type="application/octet-stream", headers={HEADER_LENGTH: str(len(head))})
