"""Two models side by side from a catalogue folder: each DAG trains and registers its own model.

``MLOPS_CONFIG_DIR`` holds the bundled flights and car-loan configs (the models renamed, so that
they never meet the other tests' entries on the shared MLflow server). Airflow parses one set of
DAGs per model; the car-loan training DAG, run with ``dag.test()`` against the real MLflow server,
trains on car loans (its own window, its own schema) while the worker's environment still names
no config, registers only its own model, and emits only its own model's asset.
"""

from __future__ import annotations

import os
from pathlib import Path

import pendulum
import pytest

from conftest import model_catalogue, run_line, walkthrough

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
NAMES = {"flights": "flights-catalogue", "car_loan": "car-loan-catalogue"}
MAX_BODY = 1024 * 1024


@pytest.fixture(scope="module")
def catalogue_bag(mlflow_server, airflow_db, tmp_path_factory):
    from airflow.dag_processing.dagbag import DagBag

    folder = model_catalogue(tmp_path_factory.mktemp("models"), NAMES)
    home = tmp_path_factory.mktemp("catalogue-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLOPS_CONFIG_DIR", str(folder))
        mp.delenv("MLOPS_CONFIG", raising=False)  # the steps must get their model's config from the task
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        mp.setenv("MLOPS_HOME", str(home))
        mp.setenv("MLOPS_PREDICTION_LOG", "")
        bag = DagBag(dag_folder=str(ROOT / "dags"))
        assert bag.import_errors == {}
        yield bag


@pytest.fixture(scope="module")
def car_loan_run(catalogue_bag):
    """The car-loan model's training DAG, run once: it registers ``car-loan-catalogue`` v1."""
    dag = catalogue_bag.get_dag("training__car_loan_catalogue")
    return dag.test(logical_date=pendulum.datetime(2019, 2, 1, tz=dag.timezone))


def test_the_car_loan_dag_of_a_catalogue_trains_and_registers_only_its_model(
    catalogue_bag, car_loan_run, mlflow_server
):
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from mlflow import MlflowClient

    assert {"training__car_loan_catalogue", "training__flights_catalogue"} <= set(catalogue_bag.dag_ids)
    run = car_loan_run
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert str(run.state) == "success", states
    assert "MLOPS_CONFIG" not in os.environ  # the model's config was the step's, and only for the step

    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    version = client.get_model_version_by_alias(NAMES["car_loan"], "champion")
    assert version.version == "1"
    assert version.tags["data.window_end"].startswith("2019-02-01")  # car loans' months, not flights'
    assert version.tags["airflow.dag_id"] == "training__car_loan_catalogue"
    assert not client.search_registered_models(f"name = '{NAMES['flights']}'")  # the other model: untouched

    with create_session() as session:
        emitted = [
            name
            for (name,) in session.query(AssetModel.name)
            .join(AssetEvent, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetEvent.source_run_id == run.run_id)
            .all()
        ]
    assert emitted == [f"{NAMES['car_loan']}.challenger"]


def test_one_server_serves_every_model_of_the_catalogue_by_name(
    car_loan_run, serving_home, april_rows, mlflow_server, tmp_path
):
    """``mlops serve`` on a catalogue: each model by its name, with its own schema, champion and metrics."""
    import json
    import shutil
    import sys

    import httpx
    import pandas as pd
    from mlflow import MlflowClient
    from prometheus_client.parser import text_string_to_metric_families

    from conftest import SERVING_MODEL, ServerProcess
    from pipelines import modeling
    from pipelines.config import load_config

    assert str(car_loan_run.state) == "success"
    folder = model_catalogue(tmp_path / "models", NAMES)
    (folder / "flights.yaml").unlink()  # flights is served as the serving tests' model, trained already
    shutil.copy(serving_home["config"], folder / "flights_serving.yaml")
    (folder / "churn.yaml").write_text("registry: {model_name: churn}\n")  # does not load
    env = {
        "MLOPS_CONFIG_DIR": str(folder),
        "MLOPS_CONFIG": "",  # nothing but the catalogue names the configs
        "MLFLOW_TRACKING_URI": mlflow_server,
        "MLOPS_HOME": str(tmp_path / "serving-home"),
        "MLOPS_PREDICTION_LOG": "",
        # as ``import feast`` leaves it in a parent: the server must keep its models' series apart
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        "MLOPS_SERVING_MAX_BODY_BYTES": str(MAX_BODY),
        "MLOPS_SERVING_MAX_BUFFERED_BYTES": str(2 * MAX_BODY),
    }
    source = pd.read_csv(
        Path(sys.prefix)
        / "lib/python3.11/site-packages/nannyml/datasets/data/synthetic_car_loan_analysis.csv"
    )
    car_records = json.loads(
        modeling.model_input(source.head(3), load_config(folder / "car_loan.yaml").dataset).to_json(
            orient="records"
        )
    )
    flight_records = april_rows[0][:4]
    champion = MlflowClient(mlflow_server, mlflow_server).get_model_version_by_alias(
        SERVING_MODEL, "champion"
    )

    server = ServerProcess(env, tmp_path / "server.log").start().wait_ready()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            car = http.post(f"/models/{NAMES['car_loan']}/predict", json={"records": car_records})
            flights = http.post(f"/models/{SERVING_MODEL}/predict", json={"records": flight_records})
            crossed = http.post(f"/models/{NAMES['car_loan']}/predict", json={"records": flight_records})
            unnamed = http.post("/predict", json={"records": flight_records})
            broken = http.post("/models/churn/predict", json={"records": car_records})
            ready = http.get(f"/v2/models/{NAMES['car_loan']}/ready")
            metrics = http.get("/metrics").text
            budget = statuses_over_one_budget(server.port, SERVING_MODEL)
            after = http.post(f"/models/{SERVING_MODEL}/predict", json={"records": flight_records[:1]})
        scraped = scraped_by_model(server.url, tmp_path)  # as the chart's Prometheus sees the pod
    finally:
        server.stop()

    assert car.status_code == 200, car.text
    assert car.json()["model_version"] == "1" and len(car.json()["predictions"]) == 3
    assert flights.status_code == 200, flights.text
    assert flights.json()["model_version"] == champion.version and len(flights.json()["predictions"]) == 4
    assert crossed.status_code == 422  # each model checks rows against its own features
    assert unnamed.status_code == 404 and "name one" in unnamed.json()["detail"]
    assert NAMES["car_loan"] in unnamed.json()["detail"] and SERVING_MODEL in unnamed.json()["detail"]
    assert broken.status_code == 404 and "its config does not load" in broken.json()["detail"]
    assert ready.status_code == 200
    # one memory bound for the process: bodies held for the car-loan model leave flights no room
    # (each model's own 2 MiB would have taken it), and the bytes come back when they are answered
    assert budget == {"other model": 503, "held": [400, 400]}, budget
    assert after.status_code == 200, after.text
    rows = {
        sample.labels["model"]: sample.value
        for family in text_string_to_metric_families(metrics)  # one valid exposition for all models
        if family.name == "mlops_predictions"
        for sample in family.samples
        if sample.name == "mlops_predictions_total"
    }
    assert rows == {NAMES["car_loan"]: 3, SERVING_MODEL: 4}
    # the chart's scrape job adds the pod's model label; the server's own per-model label wins
    # (flights: the four, and the one after the budget check)
    assert scraped == {NAMES["car_loan"]: 3, SERVING_MODEL: 5}, scraped


def statuses_over_one_budget(port: int, other_model: str) -> dict[str, object]:
    """Two bodies of 0.9 MiB held half-sent for the car-loan model, then one for ``other_model``."""
    import socket
    import time

    size = int(MAX_BODY * 0.9)

    def send(model: str) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        head = f"POST /models/{model}/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        sock.sendall(f"{head}Content-Length: {size}\r\n\r\n".encode() + b" " * (size - 100))
        return sock

    def status(sock: socket.socket) -> int:
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            assert chunk, f"the server closed without an answer: {answer!r}"
            answer += chunk
        return int(answer.split(b" ", 2)[1])

    held = [send(NAMES["car_loan"]) for _ in range(2)]
    try:
        time.sleep(0.5)  # both bodies are read as far as sent
        other = send(other_model)
        refused = status(other)
        other.close()
        for sock in held:  # the rest of each body: not JSON, a 400, but read and answered
            sock.sendall(b" " * 99 + b"x")
        return {"other model": refused, "held": [status(sock) for sock in held]}
    finally:
        for sock in held:
            sock.close()


def scraped_by_model(url: str, home: Path) -> dict[str, float]:
    """Rows scored per ``model`` label, through a real Prometheus with the chart's scrape settings."""
    import json
    import shutil
    import time

    import httpx

    from conftest import free_port, wait_http
    from pipelines.processes import start_group, stop_group

    job = (ROOT / "helm/mlops/files/monitoring/prometheus.yaml").read_text()
    assert "honor_labels: true" in job  # the setting this mirrors
    if shutil.which("prometheus") is None:
        reason = "prometheus missing: `make test` as root installs Debian's package"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [{
            "job_name": "model-server", "honor_labels": True,
            "static_configs": [{"targets": [url.removeprefix("http://")], "labels": {"model": "pod-label"}}],
        }],
    }  # fmt: skip
    (home / "prometheus.yaml").write_text(json.dumps(config))
    proc = start_group(
        ["prometheus", f"--config.file={home / 'prometheus.yaml'}", f"--storage.tsdb.path={home / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        dict(os.environ), home / "prometheus.log",
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/-/ready", 60)
        deadline, found = time.time() + 60, {}
        while time.time() < deadline and len(found) < 2:
            answer = httpx.get(
                f"http://127.0.0.1:{port}/api/v1/query",
                params={"query": "sum by (model) (mlops_predictions_total)"},
            ).json()
            found = {r["metric"].get("model", ""): float(r["value"][1]) for r in answer["data"]["result"]}
            time.sleep(1)
        return found
    finally:
        stop_group(proc)


def test_the_documented_catalogue_walkthrough_runs_as_written(tmp_path):
    """docs/your-data.md's catalogue lines, pasted into a new user's shell at a checkout's root."""
    import json

    for name in (".venv", "pipelines"):  # a checkout, without writing into this one
        (tmp_path / name).symlink_to(ROOT / name)
    shell = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "MLFLOW_", "AIRFLOW"))}
    copy, listing, train = walkthrough("your-data.md", "catalogue")
    run_line(copy, tmp_path, shell, inherit=False)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [
        "car_loan.expectations.yaml", "car_loan.yaml", "flights.expectations.yaml", "flights.yaml",
    ]  # fmt: skip
    listed = run_line(listing, tmp_path, shell, inherit=False)
    assert [line.split()[0] for line in listed.splitlines()] == ["car-loan", "flights-delay"], listed
    trained = run_line(train, tmp_path, shell, inherit=False)
    result = json.loads(trained[trained.index("{\n") :])
    assert result["register"]["registered"] and result["register"]["version"] == "1"
    assert result["ingest"]["window"]["end"].startswith("2019-02-01")  # the car loans' config, by --model
