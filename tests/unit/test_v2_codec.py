"""The V2 (Open Inference Protocol) codec: tensors to records, scores to outputs, and who may call it.

The protocol end to end, through Triton's own client, is in ``tests/e2e/test_inference_protocol.py``.
"""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest

from pipelines.serving import security, v2
from pipelines.serving.responses import _Reject


def byte_items(*items: str) -> bytes:
    return b"".join(struct.pack("<I", len(i.encode())) + i.encode() for i in items)


def binary_request(inputs: list[tuple[str, str, int, bytes]], **extra) -> tuple[bytes, str]:
    header = {
        "inputs": [
            {"name": n, "datatype": t, "shape": [rows], "parameters": {"binary_data_size": len(raw)}}
            for n, t, rows, raw in inputs
        ],
        **extra,
    }
    head = orjson.dumps(header)
    return head + b"".join(raw for *_, raw in inputs), str(len(head))


def test_binary_tensors_become_records_with_nan_as_missing():
    distance = np.array([1.5, np.nan], dtype="<f8").tobytes()
    hour = np.array([7, 23], dtype="<i4").tobytes()
    body, length = binary_request(
        [
            ("distance", "FP64", 2, distance),
            ("hour", "INT32", 2, hour),
            ("carrier", "BYTES", 2, byte_items("UA", "Ünï")),
        ],
        id="abc",
        parameters={"routing_key": "LGA", "binary_data_output": True},
    )
    parsed = v2.parse_infer_request(body, length)
    assert parsed.records == [
        {"distance": 1.5, "hour": 7, "carrier": "UA"},
        {"distance": None, "hour": 23, "carrier": "Ünï"},
    ]
    assert (parsed.request_id, parsed.routing_key) == ("abc", "LGA")
    assert parsed.outputs == {"probability": True, "prediction": True}


def test_json_tensors_flat_or_one_column_nested_and_nan_literals():
    body = (
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 1], "data": [[1.0], [NaN]]},'
        b' {"name": "c", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}],'
        b' "outputs": [{"name": "prediction"}]}'
    )
    parsed = v2.parse_infer_request(body, None)
    assert parsed.records == [{"x": 1.0, "c": "a"}, {"x": None, "c": "b"}]
    assert parsed.outputs == {"prediction": False}


@pytest.mark.parametrize(
    ("inputs", "status", "message"),
    [
        ([("c", "BYTES", 1, b"\x05\x00\x00\x00ab")], 400, "longer than the data sent"),
        ([("c", "BYTES", 1, b"\x05\x00")], 400, "4-byte length is cut off"),
        ([("c", "BYTES", 1, byte_items("a")[:4] + b"\xff")], 422, "BYTES items must be UTF-8 text"),
        ([("x", "FP64", 1, b"\x00" * 7)], 400, "not a whole number of FP64 values"),
        ([("x", "FP64", 1, b"\x00" * 8), ("x", "FP64", 1, b"\x00" * 8)], 422, "is sent twice"),
        ([("x", "FP64", 2, b"\x00" * 8)], 422, "has 1 values for shape [2]"),
    ],
    ids=["bytes-overrun", "bytes-cut", "bytes-not-utf8", "partial-double", "duplicate", "shape"],
)
def test_bad_binary_tensors_are_named(inputs, status, message):
    body, length = binary_request(inputs)
    with pytest.raises(_Reject) as caught:
        v2.parse_infer_request(body, length)
    assert caught.value.status == status and message in caught.value.message


def test_binary_data_must_all_belong_to_an_input():
    body, length = binary_request([("x", "FP64", 1, b"\x00" * 8)])
    with pytest.raises(_Reject, match="8 bytes of binary data belong to no input"):
        v2.parse_infer_request(body + b"\x00" * 8, length)
    tensor = {"name": "x", "datatype": "FP64", "shape": [1], "parameters": {"binary_data_size": 16}}
    head = orjson.dumps({"inputs": [tensor]})
    with pytest.raises(_Reject, match="binary_data_size 16 does not fit"):
        v2.parse_infer_request(head + b"\x00" * 8, str(len(head)))


def test_binary_outputs_follow_the_json_header_in_order():
    request = v2.InferRequest(records=[{}, {}, {}], outputs={"prediction": True, "probability": False})
    proba = np.array([0.1, 0.7, 0.5])
    body, headers = v2.infer_response(
        request,
        model_name="m",
        model_version="4",
        request_id="rid",
        route="champion",
        threshold=0.5,
        proba=proba,
    )
    length = int(headers[v2.HEADER_LENGTH])
    header = orjson.loads(body[:length])
    assert header["id"] == "rid" and header["parameters"]["request_id"] == "rid"
    prediction, probability = header["outputs"]
    assert prediction["parameters"]["binary_data_size"] == 24
    assert np.frombuffer(body[length:], dtype="<i8").tolist() == [0, 1, 1]
    assert probability["data"] == [0.1, 0.7, 0.5]


def test_errors_locate_problems_by_input_and_row():
    body = v2.error_body("invalid input", [{"loc": ["records", 3, "dest"], "msg": "field required"}])
    assert body == {
        "error": "invalid input",
        "detail": "invalid input",
        "errors": [{"loc": ["inputs", "dest", 3], "msg": "field required"}],
    }


@pytest.mark.parametrize(
    ("path", "scope"),
    [
        ("/v2/models/flights-delay/infer", security.PREDICT),
        ("/v2/models/flights-delay/versions/3/infer", security.PREDICT),
        ("/models/flights-delay/predict", security.PREDICT),
        ("/models/flights-delay/feedback", security.FEEDBACK),
        ("/predict", security.PREDICT),
        ("/metrics", security.ADMIN),
        ("/v2/models/flights-delay", None),
        ("/v2/models/a/b/infer", None),  # not a model name: a 404 for any valid token
    ],
)
def test_named_paths_need_the_scope_of_their_endpoint(path, scope):
    assert security.needs(path) == scope


@pytest.mark.parametrize(
    ("request_body", "message"),
    [
        ({"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1.0], "parameters": -48}]},
         "input 'x': parameters must be an object"),
        ({"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1.0]}],
          "outputs": [{"name": "prediction", "parameters": 96}]},
         "output 'prediction': parameters must be an object"),
    ],
    ids=["tensor", "output"],
)  # fmt: skip
def test_parameters_that_are_not_objects_are_a_422_not_a_crash(request_body, message):
    """Found by the API fuzz test: an integer ``parameters`` on a tensor was an AttributeError (500)."""
    with pytest.raises(_Reject) as caught:
        v2.parse_infer_request(orjson.dumps(request_body), None)
    assert caught.value.status == 422 and message in caught.value.message
