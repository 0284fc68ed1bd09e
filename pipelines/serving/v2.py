"""The Open Inference Protocol ("V2"): requests and answers of KServe, Seldon MLServer and Triton.

A V2 request sends the rows as named tensors, one per model input (the column layout of MLServer's
pandas codec): ``{"inputs": [{"name": "distance", "datatype": "FP64", "shape": [2], "data": [...]},
...], "parameters": {"routing_key": "..."}}``. Tensor data may also follow the JSON header as raw
bytes (the binary tensor extension that ``tritonclient`` uses by default): the header's length is
in ``Inference-Header-Content-Length`` and each such input carries ``binary_data_size``.

This module turns a request into the records the server already checks against the model's
signature, and the scores into V2 outputs (``probability`` FP64 and ``prediction`` INT64, as JSON
or as binary data when the client asks). The server (:mod:`pipelines.serving.server`) scores them
on the same path as ``/predict``: micro-batched, routed, logged before the answer is sent.

Reference: https://kserve.github.io/website/docs/concepts/architecture/data-plane/v2-protocol
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from pipelines.serving.payload import _parse_event_time, _text
from pipelines.serving.responses import _Reject

HEADER_LENGTH = "inference-header-content-length"
# V2 datatypes and the numpy type of their little-endian binary form (BYTES: length-prefixed items)
NUMERIC_DTYPES: dict[str, str] = {
    "BOOL": "?",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}
OUTPUTS = {"probability": "FP64", "prediction": "INT64"}


@dataclass
class InferRequest:
    """A parsed V2 request: the rows as records, and what the answer should look like."""

    records: list[dict[str, Any]]
    request_id: str | None = None
    routing_key: str | None = None
    event_time: float | None = None
    outputs: dict[str, bool] = field(default_factory=dict)  # output name -> as binary data


def _int_shape(value: Any, where: str) -> list[int]:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value)
    ):
        raise _Reject(422, f"{where}.shape must be a non-empty list of non-negative integers")
    if len(value) > 2 or (len(value) == 2 and value[1] != 1):
        raise _Reject(422, f"{where}.shape must be [rows] or [rows, 1]: one tensor per model input")
    return value


def _flatten(data: Any, where: str) -> list[Any]:
    """Row-major data, flat or nested one level ([[v], [v]] for shape [n, 1])."""
    if not isinstance(data, list):
        raise _Reject(422, f"{where}.data must be a list")
    if data and all(isinstance(v, list) for v in data):
        flat = []
        for v in data:
            if len(v) != 1:
                raise _Reject(422, f"{where}.data must hold one value per row")
            flat.append(v[0])
        return flat
    return data


def _from_binary(raw: bytes, datatype: str, where: str) -> list[Any]:
    if datatype == "BYTES":
        items, offset = [], 0
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise _Reject(400, f"{where}: a BYTES item's 4-byte length is cut off")
            (size,) = struct.unpack_from("<I", raw, offset)
            offset += 4
            if offset + size > len(raw):
                raise _Reject(400, f"{where}: a BYTES item is longer than the data sent")
            try:
                items.append(raw[offset : offset + size].decode())
            except UnicodeDecodeError:
                raise _Reject(422, f"{where}: BYTES items must be UTF-8 text") from None
            offset += size
        return items
    dtype = np.dtype(NUMERIC_DTYPES[datatype])
    if len(raw) % dtype.itemsize:
        raise _Reject(400, f"{where}: {len(raw)} bytes is not a whole number of {datatype} values")
    values = np.frombuffer(raw, dtype=dtype)
    return [None if isinstance(v, float) and math.isnan(v) else v for v in values.tolist()]


def _from_json(data: list[Any], datatype: str, where: str) -> list[Any]:
    if datatype == "BYTES":
        return data  # strings; the schema check names any non-string value
    if datatype == "BOOL":
        if not all(isinstance(v, bool) for v in data):
            raise _Reject(422, f"{where}.data must hold true or false (datatype BOOL)")
        return data
    for v in data:  # the schema check refuses text for a number; a bool here is a client's mistake
        if isinstance(v, bool):
            raise _Reject(422, f"{where}.data holds a boolean but the datatype is {datatype}")
    return [None if isinstance(v, float) and math.isnan(v) else v for v in data]


def _lenient_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise _Reject(400, f"body is not valid JSON: {exc}") from None


def parse_infer_request(body: bytes, header_length: str | None) -> InferRequest:
    """Records from a V2 inference request; a :class:`_Reject` names what is wrong with it."""
    binary = b""
    if header_length is not None:
        if not header_length.isdigit() or not 0 < int(header_length) <= len(body):
            raise _Reject(400, f"Inference-Header-Content-Length is {header_length!r}: not within the body")
        body, binary = body[: int(header_length)], body[int(header_length) :]
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        # NaN and Infinity are not JSON, but V2 clients send them (Triton's: python-rapidjson's
        # default), and Triton takes them: NaN is a missing number here, infinity a 422 later.
        payload = _lenient_json(body)
    if not isinstance(payload, dict):
        raise _Reject(422, 'body must be a JSON object like {"inputs": [{"name": ..., "data": [...]}]}')
    extra = sorted(set(payload) - {"id", "inputs", "outputs", "parameters"})
    if extra:
        raise _Reject(
            422,
            f"unknown top-level field(s) {extra}; expected 'inputs' and optional 'id', "
            "'outputs', 'parameters'",
        )
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise _Reject(422, "inputs must be a non-empty list of tensors, one per model input")
    parameters = payload.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise _Reject(422, "parameters must be an object")
    request_id = payload.get("id")
    if request_id is not None:
        if not isinstance(request_id, str):
            raise _Reject(422, "id must be a string")
        request_id = _text(request_id, "id")

    columns: dict[str, list[Any]] = {}
    offset, rows = 0, None
    for i, tensor in enumerate(inputs):
        where = f"inputs[{i}]"
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise _Reject(422, f"{where} must be an object with a name, shape, datatype and data")
        name = _text(tensor["name"], f"{where}.name")
        where = f"input {name!r}"
        if name in columns:
            raise _Reject(422, f"{where} is sent twice")
        datatype = tensor.get("datatype")
        if datatype != "BYTES" and datatype not in NUMERIC_DTYPES:
            raise _Reject(
                422,
                f"{where}: datatype {datatype!r} is not one this server takes "
                f"(BYTES, BOOL, INT8..INT64, UINT8..UINT64, FP16, FP32, FP64)",
            )
        shape = _int_shape(tensor.get("shape"), where)
        size = _object(tensor.get("parameters"), f"{where}: parameters").get("binary_data_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise _Reject(400, f"{where}: binary_data_size {size!r} does not fit the binary data sent")
            if "data" in tensor:
                raise _Reject(422, f"{where} has both data and binary_data_size")
            values = _from_binary(binary[offset : offset + size], datatype, where)
            offset += size
        else:
            values = _from_json(_flatten(tensor.get("data"), where), datatype, where)
        if len(values) != shape[0]:
            raise _Reject(422, f"{where} has {len(values)} values for shape {shape}")
        if rows is not None and shape[0] != rows:
            raise _Reject(422, f"{where} has {shape[0]} rows; the inputs before it have {rows}")
        rows = shape[0]
        columns[name] = values
    if offset != len(binary):
        raise _Reject(400, f"{len(binary) - offset} bytes of binary data belong to no input")

    names = list(columns)
    records = [dict(zip(names, row, strict=True)) for row in zip(*columns.values(), strict=True)]
    key = parameters.get("routing_key")
    if key is not None and (isinstance(key, bool) or not isinstance(key, str | int)):
        raise _Reject(422, "parameters.routing_key must be a string")
    return InferRequest(
        records=records,
        request_id=request_id,
        routing_key=None if key is None else _text(str(key), "parameters.routing_key"),
        event_time=_parse_event_time(parameters.get("event_time")),
        outputs=_requested_outputs(payload.get("outputs"), bool(parameters.get("binary_data_output"))),
    )


def _object(value: Any, what: str) -> dict[str, Any]:
    """``value`` when it is a JSON object (absent: an empty one); a 422 naming ``what`` otherwise."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Reject(422, f"{what} must be an object")
    return value


def _requested_outputs(outputs: Any, binary_default: bool) -> dict[str, bool]:
    if outputs is None:
        return dict.fromkeys(OUTPUTS, binary_default)
    if not isinstance(outputs, list) or not outputs:
        raise _Reject(422, 'outputs must be a non-empty list of {"name": ...} objects')
    wanted: dict[str, bool] = {}
    for item in outputs:
        name = item.get("name") if isinstance(item, dict) else None
        if name not in OUTPUTS:
            raise _Reject(422, f"output {name!r} does not exist; this model answers {sorted(OUTPUTS)}")
        binary = _object(item.get("parameters"), f"output {name!r}: parameters").get(
            "binary_data", binary_default
        )
        wanted[name] = bool(binary)
    return wanted


def infer_response(
    request: InferRequest,
    *,
    model_name: str,
    model_version: str,
    request_id: str,
    route: str,
    threshold: float,
    proba: np.ndarray,
) -> tuple[bytes, dict[str, str]]:
    """The V2 answer's body and headers: JSON, followed by the binary outputs if any were asked."""
    n = len(proba)
    values = {
        "probability": np.ascontiguousarray(proba, dtype="<f8"),
        "prediction": (proba >= threshold).astype("<i8"),
    }
    outputs, raw = [], []
    for name, binary in request.outputs.items():
        tensor: dict[str, Any] = {"name": name, "datatype": OUTPUTS[name], "shape": [n]}
        if binary:
            data = values[name].tobytes()
            tensor["parameters"] = {"binary_data_size": len(data)}
            raw.append(data)
        else:
            tensor["data"] = values[name].tolist()
        outputs.append(tensor)
    header = orjson.dumps(
        {
            "model_name": model_name,
            "model_version": model_version,
            "id": request.request_id or request_id,
            # request_id is what /feedback takes for these rows; route and threshold as in /predict
            "parameters": {"request_id": request_id, "route": route, "threshold": threshold},
            "outputs": outputs,
        }
    )
    if not raw:
        return header, {}
    return header + b"".join(raw), {HEADER_LENGTH: str(len(header))}


def model_metadata(name: str, versions: list[str], schema: Any) -> dict[str, Any]:
    """``GET /v2/models/<name>``: the inputs the model takes and the outputs it answers."""
    inputs = [{"name": c, "datatype": "FP64", "shape": [-1]} for c in schema.numeric]
    inputs += [{"name": c, "datatype": "BYTES", "shape": [-1]} for c in schema.categorical]
    for item in inputs:
        if item["name"] in schema.optional:
            item["parameters"] = {"optional": True}
    return {
        "name": name,
        "versions": versions,
        "platform": "mlflow_sklearn",
        "inputs": inputs,
        "outputs": [{"name": k, "datatype": v, "shape": [-1]} for k, v in OUTPUTS.items()],
        "parameters": {"content_type": "pd"},
    }


def error_body(detail: str, errors: list[dict[str, Any]] | None) -> dict[str, Any]:
    """A V2 error: ``error`` (what the V2 clients read) and ``detail`` (as every endpoint here has),
    with each problem located by input.

    The record checks locate a problem as ``["records", row, column]``; here it is
    ``["inputs", column, row]``."""
    body: dict[str, Any] = {"error": detail, "detail": detail}
    if errors:
        body["errors"] = [
            {**e, "loc": ["inputs", e["loc"][2], e["loc"][1]]}
            if len(e.get("loc", ())) == 3 and e["loc"][0] == "records"
            else e
            for e in errors
        ]
    return body


def openapi_infer(columns: list[str], max_rows: int) -> dict[str, Any]:
    """The OpenAPI request body and answers of ``/v2/models/<name>/infer``."""
    tensor = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "enum": columns},
            "shape": {
                "type": "array",
                "items": {"type": "integer", "minimum": 0, "maximum": max_rows},
                "minItems": 1,
                "maxItems": 2,
            },
            "datatype": {"type": "string", "enum": ["BYTES", *NUMERIC_DTYPES]},
            "data": {"type": "array", "maxItems": max_rows},
            "parameters": {"type": "object"},
        },
        "required": ["name", "shape", "datatype", "data"],
    }
    output = {
        "type": "object",
        "properties": {"name": {"type": "string", "enum": list(OUTPUTS)}, "parameters": {"type": "object"}},
        "required": ["name"],
    }
    request = {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "inputs": {"type": "array", "items": tensor, "minItems": 1},
            "outputs": {"type": "array", "items": output, "minItems": 1},
            "parameters": {
                "type": "object",
                "properties": {"routing_key": {"type": "string"}, "binary_data_output": {"type": "boolean"}},
            },
        },
        "required": ["inputs"],
        "additionalProperties": False,
    }
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": request}}},
        "responses": {
            "200": {
                "description": "The outputs; binary outputs follow the JSON header when asked for",
                "content": {
                    "application/json": {"schema": {"type": "object"}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                },
            }
        },
    }
