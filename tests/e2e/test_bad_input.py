"""The bad-input corpus: thirteen kinds of broken data through the training DAG (dag.test, real MLflow).

For every kind the run stops at the step that owns the problem (ingest for what cannot be read
or does not fit the source contract, validate for what the expectation suite rejects), the
error names the problem, nothing is registered, the champion and the deployment policy are
untouched, and every artifact the run left is complete (atomic writes: no temp files, every
Parquet and JSON file parses).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pendulum
import pyarrow.parquet as pq
import pytest

from conftest import dataset_config

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
MODEL = "flights-badinput"
POLICY_TAG = "mlops.deployment"


def _shift_keys(frame: pd.DataFrame, copy: int) -> pd.DataFrame:
    out = frame.copy()
    out["flight"] = out["flight"] + 10_000 * copy  # distinct keys: only the size is wrong
    return out


def corrupt(kind: str, good: pd.DataFrame, folder: Path) -> Path:
    """Write the bad variant of ``good`` for ``kind``; return its path."""
    frame = good.copy()
    path = folder / "source.parquet"
    if kind == "missing column":
        frame = frame.drop(columns=["humid"])
    elif kind == "extra column":
        frame["humidity_pct"] = frame["humid"]
    elif kind == "renamed column":
        frame = frame.rename(columns={"humid": "humidity"})
    elif kind == "wrong type":
        frame["temp"] = "warm"
    elif kind == "all-null column":
        frame["pressure"] = float("nan")
    elif kind == "out-of-range values":
        frame.loc[frame.index[::7], "distance"] = -500
    elif kind == "unseen categories":
        frame.loc[frame.index[::5], "carrier"] = "ZZ"
    elif kind == "duplicated keys":
        frame = pd.concat([frame, frame.iloc[::10]], ignore_index=True)
    elif kind == "empty file":
        path.write_bytes(b"")
        return path
    elif kind == "truncated parquet":
        frame.to_parquet(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path
    elif kind == "non-UTF-8 CSV":
        path = folder / "source.csv"
        frame["dest"] = frame["dest"].where(frame.index % 50 != 0, "Zürich")
        frame.to_csv(path, index=False, encoding="latin-1")
        return path
    elif kind == "ten times larger":
        frame = pd.concat([_shift_keys(frame, i) for i in range(10)], ignore_index=True)
    elif kind == "time travel":
        frame.loc[frame.index[::20], "time_hour"] = pd.Timestamp("2099-01-01T12:00:00Z")
    else:  # pragma: no cover
        raise AssertionError(kind)
    frame.to_parquet(path)
    return path


# kind -> (the step that must stop, words the error must contain)
CORPUS = {
    "missing column": ("validate", ["humid"]),
    "extra column": ("ingest", ["humidity_pct", "ignore_columns"]),
    "renamed column": ("ingest", ["humidity", "humid", "renamed"]),
    "wrong type": ("validate", ["temp"]),
    "all-null column": ("validate", ["pressure"]),
    "out-of-range values": ("validate", ["distance"]),
    "unseen categories": ("validate", ["carrier"]),
    "duplicated keys": ("validate", ["flight", "unique"]),
    "empty file": ("ingest", ["empty"]),
    "truncated parquet": ("ingest", ["cannot read", "parquet"]),
    "non-UTF-8 CSV": ("ingest", ["not valid UTF-8"]),
    "ten times larger": ("validate", ["row_count"]),
    "time travel": ("ingest", ["time_hour", "in the future", "2099"]),
}


@pytest.fixture(scope="module")
def stage(mlflow_server, airflow_db, flights_frame, tmp_path_factory):
    """A champion trained on the good data, with a deployment policy, and the DAG."""
    from airflow.dag_processing.dagbag import DagBag
    from mlflow import MlflowClient

    home = tmp_path_factory.mktemp("bad-input")
    good = home / "good.parquet"
    flights_frame.to_parquet(good)
    names = {"registry.model_name": MODEL, "registry.experiment": MODEL}
    good_config = dataset_config(home, str(good), **names)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        mp.setenv("MLOPS_HOME", str(home))
        mp.delenv("MLOPS_ARTIFACT_ROOT", raising=False)
        mp.setenv("MLOPS_CONFIG", str(good_config))
        dag = DagBag(dag_folder=str(ROOT / "dags")).get_dag("training")
        first = dag.test(logical_date=pendulum.datetime(2013, 4, 1, tz=dag.timezone))
        assert str(first.state) == "success"
        client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
        policy = json.dumps({"strategy": "direct", "champion": "1"})
        client.set_registered_model_tag(MODEL, POLICY_TAG, policy)
        yield {"dag": dag, "home": home, "client": client, "mp": mp, "names": names, "policy": policy}


def artifacts_are_whole(run_dir: Path) -> None:
    """Every file a failed run left is complete: no temp names, and each Parquet/JSON file parses."""
    for path in run_dir.rglob("*"):
        if not path.is_file():
            continue
        assert ".tmp-" not in path.name, f"half-written file left behind: {path}"
        if path.suffix == ".parquet":
            pq.read_metadata(path)
        elif path.suffix == ".json":
            json.loads(path.read_text())


@pytest.mark.parametrize("kind", list(CORPUS))
def test_bad_input_stops_at_the_right_step_and_changes_nothing(stage, kind, tmp_path, capfd):
    step, words = CORPUS[kind]
    dag, client = stage["dag"], stage["client"]
    source = corrupt(kind, pd.read_parquet(stage["home"] / "good.parquet"), tmp_path)
    stage["mp"].setenv("MLOPS_CONFIG", str(dataset_config(tmp_path, str(source), **stage["names"])))
    versions_before = len(client.search_model_versions(f"name = '{MODEL}'"))

    run = dag.test(logical_date=pendulum.datetime(2013, 4, 1, tz=dag.timezone))

    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert str(run.state) == "failed"
    order = ["ingest", "validate", "train", "evaluate", "register"]
    stopped = order.index(step)
    assert all(states[s] == "success" for s in order[:stopped]), states
    assert states[step] == "failed", states
    assert all(states[s] == "upstream_failed" for s in order[stopped + 1 :]), states
    failed = run.get_task_instance(step)
    assert failed.try_number == 1  # bad data is not retried
    captured = capfd.readouterr()
    message = captured.out + captured.err  # dag.test logs each task's error in this process
    for word in words:
        assert word in message, f"{kind}: {word!r} not in the error: {message}"

    assert len(client.search_model_versions(f"name = '{MODEL}'")) == versions_before  # nothing registered
    model = client.get_registered_model(MODEL)
    assert model.aliases.get("champion") in ("1", 1)
    assert model.tags[POLICY_TAG] == stage["policy"]  # the serving policy is untouched
    for run_dir in (stage["home"] / "artifacts" / "training").iterdir():
        artifacts_are_whole(run_dir)
