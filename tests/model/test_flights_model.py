"""Model tests: the real recipe on real flights, trained once for this module.

Rows are the bundled Jan-Mar 2013 flights labelled by ingest's own functions and split
by ``modeling.split_window`` with the configured fractions, exactly as the train step
does: train is the oldest 70 % (1 Jan - 6 Mar), test the newest 15 % (19-31 Mar).
The model is ``modeling.build_pipeline`` with the default config. The tests prove
sound outputs, a margin over trivial baselines, invariance to what is not a feature,
directional responses to weather measured on this data, and monotone constraints.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
from sklearn.inspection import permutation_importance
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from pipelines import dataset, modeling
from pipelines.config import load_config
from pipelines.context import StepContext
from pipelines.serving.model import (
    PARITY_TOLERANCE,
    FeatureSchema,
    InvalidInput,
    choose_predictor,
    parity_rows,
    parse_records,
)
from pipelines.settings import DEFAULT_CONFIG, Settings

CONFIG = load_config(DEFAULT_CONFIG)
DATASET = CONFIG.dataset
SCHEMA = FeatureSchema(tuple(DATASET.features.numeric), tuple(DATASET.features.categorical))
MONOTONIC = {"precip": 1, "visib": -1}
# Grids for the per-row monotone check: beyond the data's range on both sides of the splits
# (precip in 2013 reaches 1.21 in/h, visib runs 0-10 miles).
GRIDS = {"precip": np.round(np.linspace(0.0, 1.2, 25), 2), "visib": np.linspace(0.0, 10.0, 41)}


@dataclass(frozen=True)
class Data:
    x_train: pd.DataFrame
    y_train: np.ndarray
    x_test: pd.DataFrame
    y_test: np.ndarray
    raw_test: pd.DataFrame  # the test rows as the source has them: every raw column


@pytest.fixture(scope="module")
def data(flights_frame) -> Data:
    """Jan-Mar 2013 labelled and trimmed by ingest's functions, split in time as train does."""
    ctx = StepContext(
        dag_id="training",
        run_id="model-tests",
        interval_start=pd.Timestamp("2013-03-01", tz="UTC").to_pydatetime(),
        interval_end=pd.Timestamp("2013-04-01", tz="UTC").to_pydatetime(),
        config=CONFIG,
        settings=Settings.from_env(),
    )
    dataset.check_source_columns(flights_frame, ctx.config.dataset)
    labelled, _ = dataset.label_frame(flights_frame.copy(), ctx.config.dataset)
    snapshot = dataset.select_columns(labelled, ctx.config.dataset)
    splits = modeling.split_window(snapshot, DATASET, CONFIG.training)
    x_train, y_train = modeling.features_and_label(splits.train, DATASET)
    x_test, y_test = modeling.features_and_label(splits.test, DATASET)
    return Data(x_train, y_train, x_test, y_test, labelled.loc[splits.test.index])


@pytest.fixture(scope="module")
def model(data):
    """The configured model (HistGradientBoosting, defaults) fitted on the train split."""
    return modeling.build_pipeline(DATASET, CONFIG.training).fit(data.x_train, data.y_train)


@pytest.fixture(scope="module")
def proba(model, data) -> np.ndarray:
    return model.predict_proba(data.x_test)[:, 1]


@pytest.fixture(scope="module")
def monotone_model(data):
    """The same recipe with precip constrained to raise and visib to lower the late probability."""
    training = CONFIG.training.model_copy(update={"monotonic": MONOTONIC})
    return modeling.build_pipeline(DATASET, training).fit(data.x_train, data.y_train)


def score(model, raw: pd.DataFrame) -> np.ndarray:
    """Late probabilities for raw rows, the way batch scoring feeds the model."""
    return model.predict_proba(modeling.model_input(raw, DATASET))[:, 1]


def curves(model, rows: pd.DataFrame, column: str, grid: np.ndarray) -> np.ndarray:
    """(rows, grid) late probabilities with ``column`` set to each grid value in turn."""
    stacked = pd.concat([rows.assign(**{column: v}) for v in grid], ignore_index=True)
    return model.predict_proba(stacked)[:, 1].reshape(len(grid), len(rows)).T


# -- sound outputs -------------------------------------------------------------------------------


def test_predictions_are_finite_probabilities(model, data, proba):
    """Every test row, and a row of nothing but missing values and unseen categories, gets a
    finite probability; the two class columns sum to one; the answers are not one constant."""
    both = model.predict_proba(data.x_test)
    assert both.shape == (len(data.x_test), 2)
    assert np.isfinite(both).all()
    assert ((both >= 0) & (both <= 1)).all()
    np.testing.assert_allclose(both.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert proba.std() > 0.05  # measured 0.12
    blank = data.x_test.head(1).copy()
    blank[list(SCHEMA.numeric)] = np.nan
    blank[list(SCHEMA.categorical)] = "__unseen__"
    assert np.isfinite(model.predict_proba(blank)).all()


def test_feature_importances_and_training_scores_are_finite(model, data):
    """Permutation importances (ROC AUC) are finite and several features matter; the boosting
    loss curves recorded during fitting are finite."""
    rows = data.x_test.sample(2000, random_state=0)
    y = data.y_test[data.x_test.index.get_indexer(rows.index)]
    result = permutation_importance(model, rows, y, scoring="roc_auc", n_repeats=2, random_state=0)
    assert np.isfinite(result.importances).all()
    importance = pd.Series(result.importances_mean, index=rows.columns)
    assert (importance > 0.005).sum() >= 3, importance.sort_values().to_dict()
    estimator = model.named_steps["model"]
    assert np.isfinite(estimator.train_score_).all()
    assert np.isfinite(estimator.validation_score_).all()


def test_logistic_regression_coefficients_are_finite(data):
    """The alternative estimator fits finite, moderate coefficients (inputs are standardised)."""
    training = CONFIG.training.model_copy(update={"estimator": "logistic_regression"})
    model = modeling.build_pipeline(DATASET, training).fit(data.x_train, data.y_train)
    estimator = model.named_steps["model"]
    assert np.isfinite(estimator.coef_).all() and np.isfinite(estimator.intercept_).all()
    assert np.abs(estimator.coef_).max() < 10  # a huge weight means separation, i.e. a leak
    assert roc_auc_score(data.y_test, model.predict_proba(data.x_test)[:, 1]) > 0.6


# -- better than trivial -------------------------------------------------------------------------


def test_the_model_beats_trivial_baselines_on_held_out_time(data, proba):
    """On the newest rows, the model ranks and scores better than predicting a constant rate
    (the training rate, or even the test rate known in hindsight) and than the late rate by
    scheduled hour."""
    y, prior = data.y_test, data.y_train.mean()
    constants = [np.full(len(y), prior), np.full(len(y), y.mean())]
    constant_auc = max(roc_auc_score(y, c) for c in constants)  # a constant ranks nothing: 0.5
    constant_log_loss = min(log_loss(y, c) for c in constants)
    constant_brier = min(brier_score_loss(y, c) for c in constants)
    by_hour = pd.Series(data.y_train).groupby(data.x_train["hour"].to_numpy()).mean()
    hour_auc = roc_auc_score(y, data.x_test["hour"].map(by_hour).fillna(prior))

    auc = roc_auc_score(y, proba)
    assert auc >= constant_auc + 0.10
    assert auc >= hour_auc + 0.03
    assert log_loss(y, proba) <= constant_log_loss - 0.02
    assert brier_score_loss(y, proba) <= constant_brier - 0.01


# -- invariance ----------------------------------------------------------------------------------

# Changes to columns the model must not look at; each returns a perturbed copy of the raw rows.
PERTURBATIONS = {
    "flight number": lambda raw, rng: raw.assign(flight=rng.permutation(raw["flight"].to_numpy())),
    "tail number": lambda raw, rng: raw.assign(tailnum="N000ZZ"),
    "outcome columns": lambda raw, rng: raw.assign(
        **{c: rng.normal(0, 60, len(raw)).round() for c in ["dep_delay", "arr_delay", "air_time"]},
        dep_time=0,
        arr_time=2400,
    ),
    "calendar columns": lambda raw, rng: raw.assign(year=1999, month=7, day=4, minute=59),
    "unknown columns": lambda raw, rng: raw.assign(new_sensor=rng.normal(size=len(raw)), note="x"),
    "row order": lambda raw, rng: raw.iloc[rng.permutation(len(raw))],
    "column order": lambda raw, rng: raw[list(raw.columns[::-1])],
}


@pytest.mark.parametrize("change", sorted(PERTURBATIONS))
def test_predictions_ignore_what_is_not_a_feature(model, data, change):
    """Scoring raw rows: changing a non-feature column, adding columns or reordering rows or
    columns leaves every row's probability exactly as it was."""
    raw = data.raw_test
    expected = pd.Series(score(model, raw), index=raw.index)
    changed = PERTURBATIONS[change](raw, np.random.default_rng(0))
    assert not changed.equals(raw)  # the perturbation did change the input
    got = pd.Series(score(model, changed), index=changed.index).loc[raw.index]
    np.testing.assert_array_equal(got.to_numpy(), expected.to_numpy())


def test_the_pipeline_selects_its_inputs_by_name(model, data, proba):
    """Fed directly, the fitted pipeline takes columns in any order, with extra ones, by name."""
    shuffled = data.x_test[list(data.x_test.columns[::-1])].assign(tailnum="N000ZZ", flight=1)
    np.testing.assert_array_equal(model.predict_proba(shuffled)[:, 1], proba)


def test_the_serving_wrapper_answers_as_the_pipeline_whatever_the_batch(model, data, proba):
    """Without MLflow: the serving predictor gives the pipeline's answers, a row alone gets the
    answer it gets inside a batch, and a request carrying a non-feature field is refused."""
    x = data.x_test.head(2000)
    records = x.astype(object).where(x.notna(), None).to_dict("records")
    predictor, gap = choose_predictor(model, SCHEMA, parity_rows(data.x_train.head(5), SCHEMA))
    assert predictor.runtime == "lean-hgb" and gap <= PARITY_TOLERANCE
    served = predictor.predict_proba(parse_records(records, SCHEMA, max_rows=len(records)))
    np.testing.assert_allclose(served, proba[:2000], rtol=0, atol=1e-9)
    alone = [predictor.predict_proba(parse_records([r], SCHEMA, max_rows=1))[0] for r in records[:20]]
    np.testing.assert_allclose(alone, served[:20], rtol=0, atol=1e-12)
    with pytest.raises(InvalidInput) as caught:
        parse_records([{**records[0], "tailnum": "N000ZZ"}], SCHEMA, max_rows=1)
    assert [e["loc"] for e in caught.value.errors] == [["records", 0, "tailnum"]]


# -- directional ---------------------------------------------------------------------------------

# (column, usual value, adverse value, minimum rise of the mean late probability over the test
# split). Measured on this split with the config's random_state (42) and with seeds 0-8: the rise
# was positive for all ten seeds; each margin is half the smallest rise seen. Heavier rain is left
# out on purpose: from 0 to 0.3 in/h the mean moved -0.008 to +0.027 depending on the seed (rain
# that heavy is rare in training), which is what ``training.monotonic`` is for.
DIRECTIONAL = [
    ("precip", 0.0, 0.1, 0.0025),  # 0.1 in/h, wetter than 90 % of wet hours: seed 42 +0.037, min +0.005
    ("visib", 10.0, 1.0, 0.005),  # one mile of visibility: seed 42 +0.030, min +0.012
    ("humid", 50.0, 95.0, 0.07),  # saturated air (fog, rain): seed 42 +0.167, min +0.136
    ("wind_speed", 5.0, 30.0, 0.015),  # strong wind: seed 42 +0.061, min +0.029
]


@pytest.mark.parametrize(("column", "usual", "adverse", "margin"), DIRECTIONAL)
def test_adverse_weather_raises_the_late_probability_on_average(model, data, column, usual, adverse, margin):
    """Setting one weather column from a usual to an adverse value on every test row raises
    the mean late probability by at least the margin."""
    before = model.predict_proba(data.x_test.assign(**{column: usual}))[:, 1]
    after = model.predict_proba(data.x_test.assign(**{column: adverse}))[:, 1]
    assert after.mean() - before.mean() > margin


# -- monotone constraints ------------------------------------------------------------------------


@pytest.mark.parametrize("column", sorted(MONOTONIC))
def test_constrained_predictions_are_monotone_for_every_row(monotone_model, data, column):
    """With ``training.monotonic``, each row's probability never falls as precip grows and
    never rises as visib grows, over the whole grid; the feature still moves predictions."""
    rows = data.x_test.sample(400, random_state=0)
    steps = np.diff(curves(monotone_model, rows, column, GRIDS[column]), axis=1) * MONOTONIC[column]
    wrong = (steps < 0).any(axis=1)
    assert not wrong.any(), f"{wrong.sum()} of {len(rows)} rows go the wrong way (worst {steps.min():.3g})"
    rise = steps.sum(axis=1)  # the whole way from the grid's good end to its bad end
    assert rise.mean() > 0.01


@pytest.mark.parametrize("column", sorted(MONOTONIC))
def test_without_the_constraint_the_same_check_finds_violations(model, data, column):
    """The per-row check has teeth: the unconstrained model does go the wrong way for some rows."""
    rows = data.x_test.sample(400, random_state=0)
    steps = np.diff(curves(model, rows, column, GRIDS[column]), axis=1) * MONOTONIC[column]
    assert (steps < 0).any(axis=1).sum() > 0


def test_the_constraints_cost_little_ranking(monotone_model, data, proba):
    """The constrained model ranks the test rows about as well as the unconstrained one."""
    constrained = monotone_model.predict_proba(data.x_test)[:, 1]
    assert roc_auc_score(data.y_test, constrained) >= roc_auc_score(data.y_test, proba) - 0.01
