"""Property-based fuzzing of the model server with schemathesis, against its own ``/openapi.json``.

A real ``mlops serve`` process answers for the ``flights-serving`` model of the real MLflow server
(``serving_home``). Schemathesis generates valid and invalid requests for every operation of the
schema the server publishes; every answer must be free of 5xx, every 4xx must be JSON with a
human-readable ``detail``, and responses must conform to the schema where the server declares
one. What the schema leaves loose or undeclared (``/feedback``'s body, ``event_time``,
``dataframe_records``, raw bytes) is fuzzed with Hypothesis strategies under the same checks.
A second server runs with its three scoped tokens (predict, feedback, admin): without a token every
endpoint but ``/health`` and ``/ready`` is 401, with each operation's token the same fuzzing
passes, and no token reaches the server's log.

Bounded for CI: at most ``MAX_EXAMPLES`` generated requests per operation, derandomized (the same
requests on every run), no example database written to disk.

Schemathesis is driven through ``operation.as_strategy()`` and Hypothesis' ``@given`` rather
than ``schemathesis.pytest.from_fixture(...).parametrize()``: the latter (schemathesis 4.32.5)
sets ``item._nodeid``, which pytest 9.2 no longer has.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from conftest import SERVING_MODEL, ServerProcess, reset_deployment

pytestmark = pytest.mark.e2e

MAX_EXAMPLES = 150
TOKEN = "fuzz-token-7f3a9c1e5b2d48e6a0c4"
FEEDBACK_TOKEN = "fuzz-feedback-2b9e4d7a1c6f03e8"
ADMIN_TOKEN = "fuzz-admin-5c1a8f3e9d2b74a6"
TOKENS = {
    "MLOPS_SERVING_TOKEN": TOKEN,
    "MLOPS_SERVING_FEEDBACK_TOKEN": FEEDBACK_TOKEN,
    "MLOPS_SERVING_ADMIN_TOKEN": ADMIN_TOKEN,
}
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# The token each operation needs (pipelines.serving.security); none for the probes.
FEEDBACK = {"Authorization": f"Bearer {FEEDBACK_TOKEN}"}
V2 = "/v2/models/{model_name}"
AUTH_FOR = {
    "/predict": AUTH,
    "/feedback": FEEDBACK,
    "/metrics": ADMIN,
    "/ready": ADMIN,
    "/health": None,
    # the same endpoints by the model's name, and the Open Inference Protocol (V2)
    "/models/{model_name}/predict": AUTH,
    "/models/{model_name}/feedback": FEEDBACK,
    "/v2": AUTH,
    "/v2/health/live": None,
    "/v2/health/ready": None,
    V2: AUTH,
    f"{V2}/versions/{{version}}": AUTH,
    f"{V2}/ready": AUTH,
    f"{V2}/versions/{{version}}/ready": AUTH,
    f"{V2}/infer": AUTH,
    f"{V2}/versions/{{version}}/infer": AUTH,
}
OPEN_PATHS = {"/health", "/ready", "/v2/health/live", "/v2/health/ready"}
OPERATIONS = [
    ("POST", "/predict"),
    ("POST", "/feedback"),
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/metrics"),
    ("POST", "/models/{model_name}/predict"),
    ("POST", "/models/{model_name}/feedback"),
    ("GET", "/v2"),
    ("GET", "/v2/health/live"),
    ("GET", "/v2/health/ready"),
    ("GET", V2),
    ("GET", f"{V2}/versions/{{version}}"),
    ("GET", f"{V2}/ready"),
    ("GET", f"{V2}/versions/{{version}}/ready"),
    ("POST", f"{V2}/infer"),
    ("POST", f"{V2}/versions/{{version}}/infer"),
]
# the operations whose schema declares a body or parameters (a model name or version in the path)
WITH_INPUTS = {(method, path) for method, path in OPERATIONS if path == "/predict" or "{" in path}
# Valid requests for every operation; invalid ones where the schema declares inputs to violate.
FUZZ = [
    pytest.param(
        method,
        path,
        mode,
        MAX_EXAMPLES // 2 if (method, path) in WITH_INPUTS else MAX_EXAMPLES,
        id=f"{method} {path} {mode.value}",
    )
    for method, path in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or (method, path) in WITH_INPUTS
]
FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def explains_itself(status: int, content_type: str, body: bytes) -> None:
    """A 4xx must be a JSON object whose ``detail`` is a non-empty, human-readable string."""
    if not 400 <= status < 500:
        return
    assert content_type.startswith("application/json"), f"{status} without a JSON body ({content_type!r})"
    try:
        parsed = httpx.Response(200, content=body).json()
    except ValueError as exc:
        raise AssertionError(f"{status} body is not valid JSON: {exc}") from None
    assert isinstance(parsed, dict), f"{status} body is not an object: {parsed!r:.200}"
    detail = parsed.get("detail")
    assert isinstance(detail, str) and detail.strip(), f"{status} has no message: {parsed!r:.200}"
    assert re.search(r"[A-Za-z]{3}", detail), f"{status} message is not readable: {detail!r}"


@schemathesis.check
def client_errors_explain_themselves(ctx, response, case) -> None:
    """Schemathesis check: every 4xx is JSON with a human-readable ``detail``."""
    content_type = (response.headers.get("content-type") or [""])[0]
    explains_itself(response.status_code, content_type, response.content)


CHECKS = [
    not_a_server_error,
    client_errors_explain_themselves,
    response_schema_conformance,
    content_type_conformance,
]


def assert_sane(response: httpx.Response) -> None:
    """The same checks for requests sent outside schemathesis."""
    assert response.status_code < 500, (response.status_code, response.text[:500])
    explains_itself(response.status_code, response.headers.get("content-type", ""), response.content)


def fuzz(operation, mode: GenerationMode, max_examples: int, headers: dict | None = None) -> None:
    """Up to ``max_examples`` generated requests of one kind (valid or invalid), each checked."""

    @settings(FUZZ_SETTINGS, max_examples=max_examples)
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        case.call_and_validate(headers=headers, checks=CHECKS, timeout=30)

    run()


# -- servers -----------------------------------------------------------------------------------------
def _start(serving_home, home: Path, log_url: str | None = None, **extra: str) -> ServerProcess:
    """``mlops serve`` with a home and prediction log of its own (fuzz rows stay out of the shared store)."""
    log_url = log_url or str(home / "predictions")
    proc = ServerProcess(serving_home["env"], home / "server.log", MLOPS_PREDICTION_LOG=log_url, **extra)
    proc.env["MLOPS_HOME"] = str(home / "mlops")
    proc.start()
    headers = ADMIN if extra.get("MLOPS_SERVING_ADMIN_TOKEN") else None
    deadline, body = time.time() + 60, {}
    while time.time() < deadline:  # the champion is loaded: /predict can answer 200
        body = httpx.get(f"{proc.url}/ready", headers=headers, timeout=5).json()
        if (body.get("champion") or {}).get("version") == "1":
            return proc
        time.sleep(0.2)
    proc.stop()
    raise AssertionError(f"server never loaded the champion; last /ready: {body}")


def _load_schema(url: str, headers: dict | None = None):
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", headers=headers or {}, timeout=10)
    schema.config.generation.update(deterministic=True)
    return schema


@pytest.fixture(scope="module")
def open_server(serving_home, tmp_path_factory):
    reset_deployment(serving_home["settings"])
    proc = _start(serving_home, tmp_path_factory.mktemp("fuzz-open"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def auth_server(serving_home, tmp_path_factory):
    reset_deployment(serving_home["settings"])
    proc = _start(serving_home, tmp_path_factory.mktemp("fuzz-auth"), **TOKENS)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def open_schema(open_server):
    return _load_schema(open_server.url)


@pytest.fixture(scope="module")
def auth_schema(auth_server):
    return _load_schema(auth_server.url, headers=AUTH)


@pytest.fixture(scope="module")
def record(april_rows) -> dict:
    return april_rows[0][0]


def _operations(schema) -> list:
    return [result.ok() for result in schema.get_all_operations()]


# -- without auth ------------------------------------------------------------------------------------
def test_the_schema_lists_every_endpoint_and_is_fuzzed_whole(open_schema):
    operations = _operations(open_schema)
    assert {(op.method.upper(), op.path) for op in operations} == set(OPERATIONS), (
        "an endpoint was added or removed: update OPERATIONS so that it is fuzzed"
    )
    declared = {
        (op.method.upper(), op.path)
        for op in operations
        if len(op.body) or any(True for _ in op.iter_parameters())
    }
    assert declared == WITH_INPUTS, "an operation declares new inputs: fuzz it with invalid data too"


@pytest.mark.parametrize(("method", "path", "mode", "max_examples"), FUZZ)
def test_fuzz_without_auth(open_schema, method, path, mode, max_examples):
    fuzz(open_schema[path][method], mode, max_examples)


def test_metrics_is_declared_as_the_text_it_is(open_server, open_schema):
    """Regression: /metrics was declared ``application/json`` (FastAPI's default) but is Prometheus text."""
    declared = open_schema.raw_schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(declared) == ["text/plain"]
    response = httpx.get(f"{open_server.url}/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    assert "mlops_model_info" in response.text


# What the schema leaves undeclared or loose, as arbitrary JSON of the right and wrong shapes (JSON has
# no NaN or infinity: those are raw bytes, below).
json_floats = st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | json_floats | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
offsets = st.sampled_from([UTC, timezone(timedelta(hours=-14)), timezone(timedelta(hours=14, minutes=59))])
event_times = st.one_of(
    st.builds(datetime.isoformat, st.datetimes(timezones=offsets)),
    st.datetimes().map(datetime.isoformat),  # no offset: refused
    json_floats,
    st.integers(),
    st.text(max_size=30),
    json_values,
)
feedback_items = st.fixed_dictionaries(
    {},
    optional={
        "request_id": st.text(max_size=40) | json_values,
        "row": st.integers() | json_values,
        "label": st.sampled_from([0, 1, True, False, 2, -1, 0.5]) | json_values,
        "extra": json_values,
    },
)
feedback_bodies = st.one_of(
    st.fixed_dictionaries({"feedback": st.lists(feedback_items, max_size=4)}),
    st.fixed_dictionaries({"feedback": json_values}, optional={"other": json_values}),
    json_values,
)


@settings(FUZZ_SETTINGS, max_examples=MAX_EXAMPLES)
@given(body=feedback_bodies)
def test_fuzz_feedback_bodies(open_schema, body):
    """``/feedback`` declares no body in the schema, so schemathesis alone would only send it empty."""
    case = open_schema["/feedback"]["POST"].Case(body=body, media_type="application/json")
    case.call_and_validate(checks=CHECKS, timeout=30)


@settings(FUZZ_SETTINGS, max_examples=MAX_EXAMPLES)
@given(
    field=st.sampled_from(["records", "dataframe_records"]),
    extra=st.fixed_dictionaries(
        {}, optional={"event_time": event_times, "routing_key": st.text(max_size=20) | json_values}
    ),
)
def test_fuzz_undeclared_predict_fields(open_schema, record, field, extra):
    """``event_time`` and ``dataframe_records`` are accepted but not in the schema; routing_key loosely."""
    body = {field: [record], **extra}
    case = open_schema["/predict"]["POST"].Case(body=body, media_type="application/json")
    case.call_and_validate(checks=CHECKS, timeout=30)


@settings(FUZZ_SETTINGS, max_examples=50)
@given(
    path=st.sampled_from(["/predict", "/feedback"]),
    body=st.binary(max_size=200)
    | st.text(max_size=200).map(str.encode)
    | st.just(b'{"records": [{"temp": NaN}], "event_time": Infinity}'),
    content_type=st.sampled_from(["application/json", "text/plain", "application/octet-stream"]),
)
def test_fuzz_raw_bytes(open_server, path, body, content_type):
    response = httpx.post(f"{open_server.url}{path}", content=body, headers={"content-type": content_type})
    assert_sane(response)


OUT_OF_RANGE_EVENT_TIMES = [1e11, "3000-01-01T00:00:00Z", "1600-01-01T00:00:00+00:00", 1e300]
EDGE_EVENT_TIMES = ["2262-04-10T23:59:59Z", "1677-09-22T00:00:00+00:00", -9.2e9, 1.7e9]


def _post_event_times(url: str, record: dict) -> dict:
    with httpx.Client(base_url=url, timeout=30) as http:
        return {
            et: http.post("/predict", json={"records": [record], "event_time": et})
            for et in OUT_OF_RANGE_EVENT_TIMES + EDGE_EVENT_TIMES
        }


def test_event_time_outside_what_the_log_can_store_is_a_422(open_server, record):
    """Regression: an event_time before 1677 or after 2262 was accepted; the SQL prediction log then
    failed the whole micro-batch, and every request in it, with a 503 (see the test below)."""
    for et, response in _post_event_times(open_server.url, record).items():
        if et in OUT_OF_RANGE_EVENT_TIMES:
            assert response.status_code == 422, (et, response.text)
            assert "event_time must be between 1677-09-22 and 2262-04-11" in response.json()["detail"]
        else:
            assert response.status_code == 200, (et, response.text)


def test_event_time_edges_reach_the_postgresql_log(serving_home, record, tmp_path, pg_url):
    """Regression on the production profile, where out-of-range event times were a 503."""
    from pipelines.prediction_log import SqlPredictionLog

    url = pg_url
    proc = _start(serving_home, tmp_path, log_url=url)
    try:
        answers = _post_event_times(proc.url, record)
    finally:
        proc.stop()
    ids = {r.json()["request_id"] for r in answers.values() if r.status_code == 200}
    assert {et: r.status_code for et, r in answers.items()} == {
        **dict.fromkeys(OUT_OF_RANGE_EVENT_TIMES, 422),
        **dict.fromkeys(EDGE_EVENT_TIMES, 200),
    }
    store = SqlPredictionLog(url, SERVING_MODEL)
    try:
        frame = store.read()
        mine = frame[frame["request_id"].isin(ids)]
        assert len(mine) == len(EDGE_EVENT_TIMES)
        years = sorted(mine["event_time"].dt.year)
        assert years[0] == 1677 and years[-1] == 2262
    finally:
        with store.engine.begin() as conn:
            conn.execute(store.predictions.delete().where(store.predictions.c.request_id.in_(ids)))
        store.close()


def test_wrong_methods_and_unknown_paths_explain_themselves(open_server):
    with httpx.Client(base_url=open_server.url, timeout=10) as http:
        for method, path in [("GET", "/predict"), ("PUT", "/feedback"), ("POST", "/ready"), ("GET", "/nope")]:
            response = http.request(method, path)
            assert response.status_code in (404, 405), (method, path, response.status_code)
            assert_sane(response)


# -- with auth ---------------------------------------------------------------------------------------
def test_every_endpoint_but_the_probes_needs_a_token(auth_server, auth_schema):
    operations = _operations(auth_schema)
    assert {(op.method.upper(), op.path) for op in operations} == set(OPERATIONS)
    wrong = [
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": TOKEN},
        {"Authorization": f"bearer {TOKEN}"},
    ]
    with httpx.Client(base_url=auth_server.url, timeout=10) as http:
        for op in operations:
            path = re.sub(r"\{[^}]+\}", "x", op.path)
            for headers in wrong:
                response = http.request(op.method.upper(), path, headers=headers)
                if op.path in OPEN_PATHS:
                    assert response.status_code == 200, (op.label, response.text)
                    if op.path == "/ready":  # a probe learns only whether to route here
                        assert response.json() == {"ready": True}, response.text
                    continue
                assert response.status_code == 401, (op.label, headers, response.text)
                assert response.headers["www-authenticate"] == "Bearer"
                assert_sane(response)
        # and what the schema does not list: the schema itself, its UIs, unknown paths
        for path in ("/openapi.json", "/docs", "/redoc", "/no-such-path"):
            assert http.get(path).status_code == 401, path


@pytest.mark.parametrize(("method", "path", "mode", "max_examples"), FUZZ)
def test_fuzz_with_the_token(auth_schema, method, path, mode, max_examples):
    fuzz(auth_schema[path][method], mode, max_examples, headers=AUTH_FOR[path])


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_fuzz_without_the_token_is_always_401(auth_schema, method, path):
    expected = 200 if path in OPEN_PATHS else 401

    @settings(FUZZ_SETTINGS, max_examples=25)
    @given(case=auth_schema[path][method].as_strategy())
    def run(case):
        response = case.call(headers={"Authorization": "Bearer wrong"}, timeout=30)
        assert response.status_code == expected, (case.operation.label, response.status_code, response.text)

    run()


def test_the_token_never_reaches_the_log(auth_server, mlflow_server, serving_home):
    """After all the requests above (with the token, with wrong ones), neither the server's log nor
    anything in MLflow's store (database, artifacts) or the serving home holds the token."""
    auth_server.stop()  # flushes and closes the log
    log = auth_server.log_path.read_text()
    assert "(auth on: admin, feedback, predict tokens)" in log, log[:500]
    for token in TOKENS.values():
        assert token not in log
    from conftest import MLFLOW_SERVER_HOMES

    searched = 0
    for root in (MLFLOW_SERVER_HOMES[mlflow_server], serving_home["home"], auth_server.log_path.parent):
        for path in root.rglob("*"):
            if path.is_file():
                content = path.read_bytes()
                assert not any(token.encode() in content for token in TOKENS.values()), path
                searched += 1
    assert searched > 10
