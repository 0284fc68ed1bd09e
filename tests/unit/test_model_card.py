"""The model card: built from results shaped by the real steps, rendered, published to a real MLflow."""

from __future__ import annotations

import html
import json
import re

import numpy as np
import pandas as pd
import pytest

from conftest import DEFAULT_CONFIG
from pipelines import gate, model_card, modeling
from pipelines.config import PipelineConfig, load_config
from pipelines.steps.evaluate import slice_metrics

# Test rows per carrier as in a three-month flights test split (16 carriers), scaled down: big,
# medium and small slices (below evaluate's 100 rows and the slice check's 300).
CARRIERS = {"UA": 2100, "B6": 1900, "EV": 1800, "DL": 1700, "AA": 1200, "MQ": 900, "US": 700, "9E": 650,
            "WN": 450, "VX": 190, "FL": 120, "AS": 25, "F9": 25, "YV": 20, "HA": 12, "OO": 3}  # fmt: skip
NOISE = {"UA": 0.8, "B6": 1.0, "EV": 1.4, "DL": 0.6, "AA": 0.9, "MQ": 1.6, "US": 1.1, "9E": 1.2,
         "WN": 0.7, "VX": 1.0, "FL": 1.3, "AS": 0.9, "F9": 2.0, "YV": 1.0, "HA": 0.5, "OO": 1.0}  # fmt: skip
WINDOW = {"start": "2013-01-01T05:00:00+00:00", "end": "2013-04-01T04:00:00+00:00"}
DATA_HASH = "3f9a1c0d7be24e5a9c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b"


def _config(gate_changes: dict | None = None, **dataset_changes) -> PipelineConfig:
    config = load_config(DEFAULT_CONFIG)
    if not dataset_changes and not gate_changes:
        return config
    data = config.model_dump()
    data["dataset"].update(dataset_changes)
    data["gate"].update(gate_changes or {})
    return PipelineConfig.model_validate(data)


def _test_split(extra_slice: int = 0, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, dict]:
    """A test split with carrier and origin (and optionally ``dest`` with many values), labels and
    two models' scores whose quality differs by carrier."""
    rng = np.random.default_rng(seed)
    carrier = np.repeat(list(CARRIERS), list(CARRIERS.values()))
    if extra_slice:  # 110 rows for each of ``extra_slice`` destinations, carriers as often as above
        carrier = rng.choice(carrier, extra_slice * 110)
    n = len(carrier)
    frame = pd.DataFrame({"carrier": carrier, "origin": rng.choice(["EWR", "JFK", "LGA"], n)})
    if extra_slice:
        frame["dest"] = [f"D{i:03d}" for i in range(extra_slice)] * 110
    risk = rng.normal(size=n)
    noise = np.array([NOISE[c] for c in carrier]) * rng.normal(size=n)
    y = (risk + noise > 0.9).astype(int)
    scores = {
        "candidate": 1 / (1 + np.exp(-risk)),
        "champion": 1 / (1 + np.exp(-(risk + 0.8 * rng.normal(size=n)))),
    }
    return frame, y, scores


def _results(config: PipelineConfig, frame: pd.DataFrame, y: np.ndarray, scores: dict):
    """ingest, train and evaluation results as the steps write them, from the real functions."""
    threshold = modeling.best_f1_threshold(y, scores["candidate"])
    candidate = modeling.classification_metrics(y, scores["candidate"], threshold)
    champion = modeling.classification_metrics(y, scores["champion"], 0.5)
    slices = slice_metrics(frame, y, scores, config.dataset.slices)
    fairness = gate.slice_gaps(config.gate.slices, slices)
    decision = gate.decide(config.gate, candidate, champion, None, fairness)
    ingest = {
        "snapshot_uri": "/tmp/artifacts/training/run-1/ingest/snapshot.parquet",
        "rows": 80_412,
        "rows_in_interval": 27_001,
        "dropped_unlabelled": 2_175,
        "data_hash": DATA_HASH,
        "columns": config.dataset.columns,
        "interval": {"start": "2013-03-01T05:00:00+00:00", "end": "2013-04-01T04:00:00+00:00"},
        "window": WINDOW,
    }
    train = {
        "mlflow_run_id": "0123456789abcdef0123456789abcdef",
        "model_uri": "models:/m-0123456789abcdef",
        "estimator": "hist_gradient_boosting",
        "best_params": {},
        "threshold": threshold,
        "validation": modeling.classification_metrics(y[::2], scores["candidate"][::2], threshold),
        "rows": {"train": 56_288, "validation": 12_062, "test": len(y)},
        "test_uri": "/tmp/artifacts/training/run-1/train/test.parquet",
        "reference_profile_uri": "/tmp/artifacts/training/run-1/train/reference_profile.json",
        "reference_uri": "/tmp/artifacts/training/run-1/train/reference.parquet",
        "training_mode": {"mode": "stateless", "from_version": None},
        "data_hash": DATA_HASH,
    }
    evaluation = {
        "run_key": "training/run-1",
        "data_hash": DATA_HASH,
        "candidate": {"model_uri": train["model_uri"], "metrics": candidate},
        "champion": {"version": "2", "run_id": "feedbeef" * 4, "metrics": champion},
        "slices": slices,
        "fairness": fairness,
        "calibration": modeling.calibration_bins(y, scores["candidate"]),
        "decision": decision,
    }
    # What evaluate writes is what the card reads: JSON, not numpy.
    return json.loads(json.dumps({"ingest": ingest, "train": train, "evaluation": evaluation}))


def _card(config: PipelineConfig | None = None, extra_slice: int = 0, **kw) -> tuple[dict, dict]:
    config = config or _config()
    results = _results(config, *_test_split(extra_slice))
    kw.setdefault("registered_at", "2013-04-01T06:00:00+00:00")
    card = model_card.build(config=config, model_name="flights-delay", version=3, **results, **kw)
    return card, results


@pytest.fixture(scope="module")
def built():
    return _card()


def test_build_gathers_every_section_as_plain_json(built):
    card, r = built
    config = _config()
    assert json.loads(json.dumps(card, allow_nan=False)) == card
    assert list(card) == [
        "schema_version", "model_name", "version", "registered_at", "intended_use", "training_data",
        "model", "metrics", "slices", "fairness", "gate", "known_limits",
    ]  # fmt: skip
    assert card["version"] == "3" and card["intended_use"] == config.dataset.intended_use
    data = card["training_data"]
    assert data["provenance"] == config.dataset.provenance.model_dump()
    assert data["window"] == WINDOW and data["rows"] == 80_412 and data["data_hash"] == DATA_HASH
    assert data["label"] == {"name": "late", "expression": "arr_delay > 15", "required": ["arr_delay"]}
    model = card["model"]
    assert model["estimator"] == "hist_gradient_boosting" and model["training_mode"] == "stateless"
    assert model["params"] == {"learning_rate": 0.1, "max_leaf_nodes": 31, "min_samples_leaf": 20}
    assert model["threshold"] == r["train"]["threshold"] and model["code_version"]
    assert card["metrics"]["candidate"] == r["evaluation"]["candidate"]["metrics"]
    assert card["metrics"]["champion"]["version"] == "2"
    # Slices: every value evaluate listed, with rows, positive rate and both models' ROC AUC.
    carriers = {row["value"]: row for row in card["slices"]["columns"]["carrier"]}
    assert set(carriers) == set(CARRIERS)
    source = r["evaluation"]["slices"]["carrier"]["UA"]
    assert (
        carriers["UA"]["rows"] == CARRIERS["UA"]
        and carriers["UA"]["positive_rate"] == source["positive_rate"]
    )
    assert carriers["UA"]["roc_auc"] == source["roc_auc"] and carriers["UA"]["scored"]
    # Scored exactly as the slice check scored them (gate.slices.min_rows is 300 in flights.yaml).
    fairness = r["evaluation"]["fairness"]["columns"]["carrier"]
    assert {v for v, row in carriers.items() if not row["scored"]} == set(fairness["unscored"])
    assert {"VX", "FL", "AS", "F9", "YV", "HA", "OO"} == set(fairness["unscored"])
    assert card["fairness"]["columns"]["carrier"]["gap"] == fairness["gap"]
    assert card["gate"]["checks"] == r["evaluation"]["decision"]["checks"]
    kinds = [limit["kind"] for limit in card["known_limits"]]
    assert kinds[: len(config.dataset.known_limits)] == ["config"] * len(config.dataset.known_limits)
    assert {"unscored_slices", "slice_gap", "historical_window", "label"} <= set(kinds)


def _expected_numbers(card: dict, r: dict) -> list[str]:
    ev = r["evaluation"]
    gap = ev["fairness"]["columns"]["carrier"]
    return [
        f"{ev['candidate']['metrics']['roc_auc']:.4f}",
        f"{ev['champion']['metrics']['roc_auc']:.4f}",
        f"{ev['candidate']['metrics']['pr_auc']:.4f}",
        f"{ev['candidate']['metrics']['log_loss']:.4f}",
        f"{r['train']['threshold']:.4f}",
        f"{r['train']['validation']['roc_auc']:.4f}",
        f"{gap['gap']:.4f}",
        f"{gap['best']['score']:.4f}",
        f"{gap['worst']['score']:.4f}",
        f"{ev['slices']['carrier']['DL']['roc_auc']['candidate']:.4f}",
        f"{ev['slices']['carrier']['DL']['roc_auc']['champion']:.4f}",
        f"{ev['slices']['carrier']['DL']['positive_rate']:.3f}",
        f"{ev['decision']['checks'][0]['threshold']:.4f}",
        "80,412",
        "2,175",
        f"{len(r['train']['rows']) and r['train']['rows']['test']:,}",
        DATA_HASH,
        "2013-01-01 05:00 UTC",
        "2013-04-01 04:00 UTC",
    ]


def test_markdown_has_every_section_and_number(built):
    card, r = built
    config = _config()
    md = model_card.to_markdown(card)
    for heading in [
        "# Model card: flights-delay v3", "## Intended use", "## Training data", "## Model",
        "## Metrics (test split", "## Gate: PASSED", "## Slice check (ROC AUC gap)", "## Slices (ROC AUC)",
        "## Known limits",
    ]:  # fmt: skip
        assert heading in md, heading
    for number in _expected_numbers(card, r):
        assert number in md, number
    provenance = config.dataset.provenance
    for text in [provenance.owner, provenance.license, "arr_delay > 15", "hist_gradient_boosting",
                 "learning_rate=0.1000", card["model"]["code_version"], "stateless", "**Within the limit**",
                 "reported, not gating", "| UA", "| HA \\* |", "| EWR", "absolute"]:  # fmt: skip
        assert text in md, text
    assert "| vs_champion |" in md
    assert " ".join(provenance.source.split())[:60] in md
    assert " ".join(config.dataset.intended_use.split())[:80] in md
    for limit in config.dataset.known_limits:
        assert limit[:60] in md
    assert "Showing the" not in md  # the flights-sized card fits whole
    # Tables are well formed: every row of a table has its header's number of cells.
    for block in re.split(r"\n\s*\n", md):
        lines = [line for line in block.splitlines() if line.startswith("|")]
        if lines:
            widths = {len(re.split(r"(?<!\\)\|", line)) for line in lines}
            assert len(widths) == 1, block


def test_html_is_standalone_with_the_same_content(built):
    card, r = built
    page = model_card.to_html(card)
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert "<script" not in page and "<link" not in page and 'src="http' not in page
    assert "<style>" in page and page.count("<svg") == 2  # a chart per slice column
    for heading in ["Intended use", "Training data", "Model", "Metrics (test split", "Gate: ",
                    "Slice check", "Slices (ROC AUC)", "Known limits"]:  # fmt: skip
        assert f"<h2>{heading}" in page, heading
    for number in _expected_numbers(card, r):
        assert number in page, number
    provenance = _config().dataset.provenance
    assert html.escape(provenance.owner) in page and html.escape(provenance.terms_of_use) in page
    assert "<code>arr_delay &gt; 15</code>" in page
    for carrier in CARRIERS:  # every slice, the small ones too
        assert f"<td>{carrier}</td>" in page


def test_a_wide_gap_and_a_wide_swing_are_on_the_card():
    """Slice gap over the limit (reported, not gating) and a swing that needs a person's approval."""
    config = _config({"swing_band": 0.02, "slices": {"max_gap": 0.05, "gating": False, "min_rows": 300}})
    card, r = _card(config, registered_at=1_364_796_000_000)  # MLflow's creation_timestamp (ms)
    decision = r["evaluation"]["decision"]
    assert decision["passed"] and decision["approval_required"]
    assert card["registered_at"] == "2013-04-01T06:00:00+00:00"
    assert card["gate"]["approval_reason"] == decision["approval_reason"]
    assert card["fairness"]["passed"] is False
    md, page = model_card.to_markdown(card), model_card.to_html(card)
    assert "**Approval required before rollout:**" in md
    assert decision["approval_reason"][:40] in md and html.escape(decision["approval_reason"][:40]) in page
    assert "**Gap too wide (reported only)**" in md and "<b>Gap too wide (reported only)</b>" in page
    assert "WIDER than the allowed 0.05 (reported, not gating)" in md


def test_a_gating_slice_check_that_fails_shows_its_numbers():
    config = _config({"slices": {"max_gap": 0.05, "gating": True, "min_rows": 300}})
    card, r = _card(config)
    gap = r["evaluation"]["fairness"]["columns"]["carrier"]
    md = model_card.to_markdown(card)
    assert "## Gate: REJECTED" in md and "**Gap too wide: the gate rejects**" in md
    row = next(line for line in md.splitlines() if line.startswith("| slice_gap:carrier |"))
    assert f"{gap['gap']:.4f}" in row and "0.0500" in row and "**no**" in row
    assert f"best {gap['best']['value']} {gap['best']['score']:.4f}" in row


def test_personal_data_is_never_claimed_as_a_feature_when_excluded(built):
    card, _ = built
    personal = card["training_data"]["personal_data"]
    assert personal["columns"] == ["tailnum"] and personal["used_as_features"] == []
    assert personal["any_used_as_feature"] is False and personal["in_snapshot"] == []
    features = card["model"]["features"]
    assert "tailnum" not in features["numeric"] + features["categorical"]
    for text in (model_card.to_markdown(card), model_card.to_html(card)):
        mentions = [line for line in text.splitlines() if "tailnum" in line]
        assert mentions, "the card names the personal-data column"
        for line in mentions:
            # Only the personal-data entry names it, and it says it is not a feature.
            assert "tailnum: not used as a feature (not in the training data)" in line
            assert "Features" not in line and "features</th>" not in line


def test_a_personal_column_allowed_as_a_feature_is_declared():
    config = _config(personal_data={"columns": ["tailnum", "origin"], "allowed_as_features": ["origin"]})
    card, _ = _card(config)
    personal = card["training_data"]["personal_data"]
    assert personal["used_as_features"] == ["origin"] and personal["any_used_as_feature"] is True
    assert personal["used_as_slices"] == ["origin"]
    md = model_card.to_markdown(card)
    assert "origin: used as a feature (allowed by config)" in md
    assert "tailnum: not used as a feature" in md


def test_description_stays_within_mlflow_limit_with_a_large_slice_table():
    config = _config(slices=["carrier", "origin", "dest"])
    card, r = _card(config, extra_slice=400)
    assert len(card["slices"]["columns"]["dest"]) == 400
    md = model_card.to_markdown(card)
    assert len(md.encode()) <= model_card.DESCRIPTION_LIMIT == 5000
    assert "## Known limits" in md and "## Gate: PASSED" in md  # the card survives, the tables shrink
    assert re.search(r"Showing the \d+ best and \d+ worst of 400 slices", md) or "left out" in md
    # The best and the worst dest slice are the ones kept.
    dest = r["evaluation"]["slices"]["dest"]
    best = max(dest, key=lambda v: dest[v]["roc_auc"]["candidate"])
    worst = min(dest, key=lambda v: dest[v]["roc_auc"]["candidate"])
    assert re.search(rf"\| {best}( \\\*)? \|", md) and re.search(rf"\| {worst}( \\\*)? \|", md)
    # Small tables stay whole while the big ones shrink.
    assert all(f"| {origin} |" in md for origin in ("EWR", "JFK", "LGA"))
    # The HTML keeps every slice.
    page = model_card.to_html(card)
    assert all(f"<td>D{i:03d}</td>" in page for i in range(400))


def test_description_is_cut_to_the_limit_when_even_the_text_is_too_long():
    long = "A limit worth reading in full, and a very long one. " * 20
    config = _config(known_limits=[long] * 30, intended_use=long * 3)
    card, _ = _card(config)
    md = model_card.to_markdown(card)
    assert len(md.encode()) <= model_card.DESCRIPTION_LIMIT
    assert md.rstrip().endswith("in the run's artifacts)_")
    assert len(model_card.to_markdown(card, limit=1500).encode()) <= 1500


def test_publish_stores_the_card_with_the_version_in_a_real_mlflow(tmp_path, monkeypatch):
    import mlflow
    import mlflow.sklearn
    from mlflow import MlflowClient
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils
    from sklearn.linear_model import LogisticRegression

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", uri)
    monkeypatch.setattr(registry_utils, "_registry_uri", uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("cards", artifact_location=(tmp_path / "artifacts").as_uri())
    x = pd.DataFrame({"a": np.arange(40.0), "b": np.arange(40.0) % 7})
    with mlflow.start_run(experiment_id=experiment) as run:
        model = LogisticRegression().fit(x, (x["a"] > 20).astype(int))
        info = mlflow.sklearn.log_model(model, name="model", pip_requirements=["scikit-learn"])
    version = mlflow.register_model(info.model_uri, "card-test").version
    run_id = run.info.run_id

    card, _ = _card()
    first = model_card.publish(client, model_name="card-test", version=version, run_id=run_id, card=card)
    second = model_card.publish(client, model_name="card-test", version=version, run_id=run_id, card=card)
    assert first == second
    assert first["uri"] == f"runs:/{run_id}/model_card"
    assert first["html"] == f"runs:/{run_id}/model_card/model_card.html"

    stored = client.get_model_version("card-test", version)
    assert stored.description == model_card.to_markdown(card)
    assert len(stored.description) <= model_card.DESCRIPTION_LIMIT
    assert stored.tags["model_card"] == first["uri"]
    listed = sorted(a.path for a in client.list_artifacts(run_id, "model_card"))
    assert listed == ["model_card/model_card.html", "model_card/model_card.json", "model_card/model_card.md"]
    assert mlflow.artifacts.load_dict(first["json"]) == card
    assert mlflow.artifacts.load_text(first["markdown"]) == stored.description
    assert mlflow.artifacts.load_text(first["html"]) == model_card.to_html(card)
    assert first["artifact_uri"].startswith((tmp_path / "artifacts").as_uri())
    # One version, one card: the retry made neither a second version nor a second set of files.
    assert len(client.search_model_versions("name = 'card-test'")) == 1
    assert [a.path for a in client.list_artifacts(run_id)].count("model_card") == 1
