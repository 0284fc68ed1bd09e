"""The closed loop's traffic on any dataset: a month of history as the requests a client would send.

Real data: April 2013 of the bundled flights, February 2019 of the car loans (NannyML's wheel).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlops_demo.traffic import month_rows, requests_of
from pipelines.config import load_config
from pipelines.settings import DEFAULT_CONFIG

CAR_LOAN = DEFAULT_CONFIG.with_name("car_loan.yaml")


def _requests(config, month):
    raw, x, label = month_rows(config, month)
    return raw, x, label, requests_of(raw, x, config)


def _every_row_once(requests, n):
    index = np.concatenate([r["index"] for r in requests])
    assert len(index) == n and len(np.unique(index)) == n  # each row is sent exactly once


def test_flights_go_out_as_one_request_per_origin_and_hour():
    config = load_config(DEFAULT_CONFIG)
    assert config.dataset.request_group == ["origin"]
    raw, x, label, requests = _requests(config, "2013-04")
    assert len(raw) > 20_000 and len(x) == len(label) == len(raw)
    _every_row_once(requests, len(raw))
    for request in requests[:200]:
        rows = raw.iloc[request["index"]]
        assert rows["origin"].nunique() == 1 and rows["time_hour"].nunique() == 1
        hour = rows["time_hour"].iloc[0]
        assert request["body"]["routing_key"] == f"{rows['origin'].iloc[0]}:{hour}"
        assert request["body"]["event_time"] == hour.isoformat()
        assert len(request["body"]["records"]) == len(rows)
        assert set(request["body"]["records"][0]) == set(x.columns)
    assert len(requests) == raw.groupby(["origin", "time_hour"]).ngroups


def test_a_dataset_without_a_request_group_sends_a_request_per_time_value():
    config = load_config(CAR_LOAN)
    assert config.dataset.request_group == []
    raw, _, label, requests = _requests(config, "2019-02")
    assert len(raw) > 1_000 and set(np.unique(label)) == {0, 1}
    _every_row_once(requests, len(raw))
    assert len(requests) == raw["timestamp"].nunique()
    first = requests[0]
    when = raw["timestamp"].iloc[first["index"][0]]
    assert first["body"]["routing_key"] == str(when) and first["body"]["event_time"] == when.isoformat()
    months = pd.to_datetime([r["body"]["event_time"] for r in requests], format="ISO8601").strftime("%Y-%m")
    assert set(months) == {"2019-02"}


def test_a_request_group_must_name_columns_the_config_reads(tmp_path):
    import yaml

    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    data["base_dir"] = str(DEFAULT_CONFIG.parent)
    data["dataset"]["request_group"] = ["gate_number"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(Exception, match=r"request_group columns \['gate_number'\] must be key, feature"):
        load_config(path)
