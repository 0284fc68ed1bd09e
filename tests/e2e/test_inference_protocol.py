"""The model server speaks the Open Inference Protocol (V2): Triton's own HTTP client works unchanged.

A real ``mlops serve`` process answers for ``flights-serving`` from the real MLflow server
(``serving_home``). ``tritonclient.http`` (NVIDIA's client, not ours) checks liveness, readiness
and metadata, and scores April 2013 flights with its defaults: inputs and outputs as binary tensor
data. The V2 answers must equal ``/predict``'s for the same rows, land in the prediction log under
the request id the answer carries (which ``/models/<name>/feedback`` then takes), and pin a
version when the path names one. Bad requests get a 4xx whose ``error`` names the problem.
"""

from __future__ import annotations

import dataclasses
import time

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from conftest import SERVING_MODEL, ServerProcess, reset_deployment
from pipelines import prediction_log
from pipelines.config import load_config
from pipelines.serving.policy import POLICY_TAG, Policy

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(serving_home, tmp_path_factory):
    reset_deployment(serving_home["settings"])
    home = tmp_path_factory.mktemp("v2-server")
    proc = ServerProcess(
        serving_home["env"], home / "server.log", MLOPS_PREDICTION_LOG=str(home / "predictions")
    )
    proc.start()
    proc.settings = dataclasses.replace(
        serving_home["settings"], prediction_log_url=str(home / "predictions")
    )
    deadline = time.time() + 60
    while httpx.get(f"{proc.url}/v2/health/ready", timeout=5).status_code != 200:
        assert time.time() < deadline, "the server never loaded the champion"
        time.sleep(0.2)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def features(serving_home) -> tuple[list[str], list[str]]:
    config = load_config(serving_home["config"])
    return list(config.dataset.features.numeric), list(config.dataset.features.categorical)


@pytest.fixture
def client(server):
    http = triton.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=30)
    yield http
    http.close()


def tensors(records: list[dict], features, binary: bool = True) -> list[triton.InferInput]:
    """One V2 input per feature, the way a Triton user builds them (missing numbers as NaN)."""
    numeric, categorical = features
    inputs = []
    for name in numeric:
        values = np.array([np.nan if r[name] is None else r[name] for r in records], dtype=np.float64)
        tensor = triton.InferInput(name, [len(records)], "FP64")
        tensor.set_data_from_numpy(values, binary_data=binary)
        inputs.append(tensor)
    for name in categorical:
        values = np.array([r[name].encode() for r in records], dtype=np.object_)
        tensor = triton.InferInput(name, [len(records)], "BYTES")
        tensor.set_data_from_numpy(values, binary_data=binary)
        inputs.append(tensor)
    return inputs


def test_health_readiness_and_metadata_through_tritons_client(client, features):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(SERVING_MODEL)
    assert client.is_model_ready(SERVING_MODEL, "1") and not client.is_model_ready(SERVING_MODEL, "3")
    assert not client.is_model_ready("no-such-model")
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    meta = client.get_model_metadata(SERVING_MODEL)
    numeric, categorical = features
    assert meta["name"] == SERVING_MODEL and meta["versions"] == ["1"]
    assert {(i["name"], i["datatype"]) for i in meta["inputs"]} == {
        *((n, "FP64") for n in numeric),
        *((c, "BYTES") for c in categorical),
    }
    assert [o["name"] for o in meta["outputs"]] == ["probability", "prediction"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary-tensors", "json-tensors"])
def test_tritons_client_gets_the_same_scores_as_predict(server, client, april_rows, features, binary):
    records = [dict(r) for r in april_rows[0][:64]]
    if binary:  # a missing number travels as NaN (JSON has no NaN: Triton's client refuses it)
        records[0] = {**records[0], features[0][0]: None}
    rest = httpx.post(f"{server.url}/predict", json={"records": records}, timeout=30).json()
    outputs = [
        triton.InferRequestedOutput(name, binary_data=binary) for name in ("probability", "prediction")
    ]
    result = client.infer(SERVING_MODEL, tensors(records, features, binary), outputs=outputs)
    expected = np.array([p["probability"] for p in rest["predictions"]])
    np.testing.assert_allclose(result.as_numpy("probability"), expected, rtol=0, atol=1e-12)
    assert result.as_numpy("prediction").tolist() == [p["prediction"] for p in rest["predictions"]]
    response = result.get_response()
    assert response["model_name"] == SERVING_MODEL and response["model_version"] == "1"
    assert response["parameters"]["route"] == "champion"
    assert response["parameters"]["threshold"] == rest["threshold"]


def test_v2_predictions_are_logged_and_take_feedback_by_name(server, client, april_rows, features):
    records, labels = april_rows[0][100:105], april_rows[1][100:105]
    result = client.infer(SERVING_MODEL, tensors(records, features), request_id="client-chosen-id")
    response = result.get_response()
    assert response["id"] == "client-chosen-id"  # V2 echoes the client's id ...
    request_id = response["parameters"]["request_id"]  # ... and the server's own one is for feedback
    items = [{"request_id": request_id, "row": i, "label": int(labels[i])} for i in range(5)]
    answer = httpx.post(f"{server.url}/models/{SERVING_MODEL}/feedback", json={"feedback": items})
    assert answer.json() == {"recorded": 5}, answer.text
    store = prediction_log.open_log(server.settings, SERVING_MODEL, writer=False)
    joined = prediction_log.with_feedback(store.read(), store.read_feedback())
    mine = joined[joined["request_id"] == request_id].sort_values("row")
    assert mine["label"].tolist() == [int(x) for x in labels]
    assert mine["input.temp"].tolist() == [r["temp"] for r in records]
    np.testing.assert_allclose(mine["probability"], result.as_numpy("probability"))


def test_a_version_in_the_path_pins_champion_or_challenger(
    server, client, april_rows, features, serving_home
):
    settings = serving_home["settings"]
    from pipelines import tracking

    registry = tracking.client(settings)
    records = april_rows[0][:20]
    try:
        registry.set_registered_model_alias(SERVING_MODEL, "challenger", "2")
        policy = Policy(strategy="canary", challenger_version="2", share=0.0, rollout_id="v2-pin")
        registry.set_registered_model_tag(SERVING_MODEL, POLICY_TAG, policy.to_json())
        deadline = time.time() + 60
        while not client.is_model_ready(SERVING_MODEL, "2"):
            assert time.time() < deadline, "the server never loaded the challenger"
            time.sleep(0.2)
        by_version = {
            v: client.infer(SERVING_MODEL, tensors(records, features), model_version=v) for v in "12"
        }
        plain = client.infer(SERVING_MODEL, tensors(records, features))  # share 0: the champion
        routes = {v: r.get_response()["parameters"]["route"] for v, r in by_version.items()}
        assert routes == {"1": "champion", "2": "challenger"}
        assert plain.get_response()["model_version"] == "1"
        assert not np.allclose(
            by_version["1"].as_numpy("probability"), by_version["2"].as_numpy("probability")
        )
        assert sorted(client.get_model_metadata(SERVING_MODEL)["versions"]) == ["1", "2"]
        with pytest.raises(
            InferenceServerException, match=r"version '3' is not served; these are: \['1', '2'\]"
        ):
            client.infer(SERVING_MODEL, tensors(records, features), model_version="3")
    finally:
        reset_deployment(settings)
    deadline = time.time() + 60
    while client.is_model_ready(SERVING_MODEL, "2"):
        assert time.time() < deadline, "the server kept the challenger"
        time.sleep(0.2)


def test_bad_v2_requests_name_the_problem(server, client, april_rows, features):
    records = april_rows[0][:3]
    numeric, categorical = features
    with pytest.raises(
        InferenceServerException, match=f"no model 'other' here; this server serves '{SERVING_MODEL}'"
    ):
        client.infer("other", tensors(records, features))
    missing = [t for t in tensors(records, features) if t.name() != categorical[0]]
    with pytest.raises(InferenceServerException, match=rf"records\.0\.{categorical[0]}: field required"):
        client.infer(SERVING_MODEL, missing)

    url = f"{server.url}/v2/models/{SERVING_MODEL}/infer"
    good = {n: [r[n] for r in records] for n in numeric + categorical}

    def body(**change) -> dict:
        inputs = [
            {"name": n, "shape": [3], "datatype": "FP64" if n in numeric else "BYTES", "data": v}
            for n, v in good.items()
        ]
        for name, tensor in change.items():
            inputs = [dict(t, **tensor) if t["name"] == name else t for t in inputs]
        return {"inputs": inputs}

    assert httpx.post(url, json=body()).status_code == 200
    cases = {
        "short": (body(**{numeric[0]: {"data": good[numeric[0]][:2]}}), "has 2 values for shape [3]"),
        "rows": (
            body(**{numeric[0]: {"shape": [2], "data": good[numeric[0]][:2]}}),
            "the inputs before it have 2",
        ),
        "type": (
            body(**{categorical[0]: {"datatype": "BF16"}}),
            "datatype 'BF16' is not one this server takes",
        ),
        "text": (body(**{numeric[1]: {"datatype": "BYTES", "data": ["a", "b", "c"]}}), "must be a number"),
        "matrix": (body(**{numeric[0]: {"shape": [1, 3]}}), "shape must be [rows] or [rows, 1]"),
        "output": ({**body(), "outputs": [{"name": "logits"}]}, "output 'logits' does not exist"),
    }
    for case, (sent, message) in cases.items():
        answer = httpx.post(url, json=sent)
        assert answer.status_code == 422, (case, answer.text)
        assert message in answer.json()["error"] and answer.json()["detail"] == answer.json()["error"], case
    located = httpx.post(url, json=cases["text"][0]).json()["errors"]
    assert located[0]["loc"] == ["inputs", numeric[1], 0]  # by input and row, not by record
    cut = httpx.post(url, content=b'{"inputs": []}xx', headers={"Inference-Header-Content-Length": "99"})
    assert cut.status_code == 400 and "not within the body" in cut.json()["error"]
