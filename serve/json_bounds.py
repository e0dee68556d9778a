"""How much a KServe v2 infer request's JSON may build, checked on its bytes before any parser sees it.

A parser that builds the document (pydantic's, ``json.loads``) turns 10 MB of nested one-element lists into
millions of Python objects. Every JSON array starts with ``[``, every object with ``{``, and every value past the
first of its container follows a ``,``; so counting those three bytes (C speed, no parse) gives an upper bound on
the lists and values the parse can build, strings included. A body whose bound exceeds what this model's largest
valid request holds, plus room for the protocol's small fields, is refused before it is parsed, so what is parsed
builds no more than the model's largest valid request does. Refusing a valid request would need
thousands of brackets or commas inside its strings.
"""

from __future__ import annotations

import math

from fastapi import HTTPException

OTHER_VALUES = 10_000  # JSON values and lists outside the input's data: a valid request has a few dozen


def most_lists(shape: list[int]) -> int:
    """The lists of ``data`` nested as ``shape`` (``[2, 3, 4]``: 1 + 2 + 2*3)."""
    return sum(math.prod(shape[:depth]) for depth in range(len(shape)))


def upper_bounds(body: bytes) -> tuple[int, int]:
    """At least as many lists, and at least as many values (containers included), as the JSON in ``body`` holds."""
    lists, objects = body.count(b"["), body.count(b"{")
    return lists, body.count(b",") + lists + objects + 1  # the first value of each container, and the document


def check_json_bounds(body: bytes, sample_shape: list[int], max_batch: int) -> None:
    """400 unless ``body`` holds few enough lists and values for one input of ``[max_batch, *sample_shape]``."""
    largest = [max_batch, *sample_shape]
    numbers, nesting = math.prod(largest), most_lists(largest)
    lists, values = upper_bounds(body)
    if lists > nesting + OTHER_VALUES or values > numbers + nesting + OTHER_VALUES:
        raise HTTPException(
            400, f"the request's JSON has up to {values:,} values in {lists:,} lists, more than this model's largest "
            f"request ({max_batch} samples of {sample_shape}: {numbers:,} numbers in {nesting:,} lists, and "
            f"{OTHER_VALUES:,} values for the other fields)")
