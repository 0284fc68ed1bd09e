"""Request parsing against the signature and the lean predictor's parity with scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines import modeling
from pipelines.config import load_config
from pipelines.serving.model import (
    FeatureSchema,
    InvalidInput,
    PipelinePredictor,
    choose_predictor,
    parity_rows,
    parse_records,
)
from pipelines.settings import DEFAULT_CONFIG

CONFIG = load_config(DEFAULT_CONFIG)
SCHEMA = FeatureSchema(tuple(CONFIG.dataset.features.numeric), tuple(CONFIG.dataset.features.categorical))


def records_of(frame):
    x = modeling.model_input(frame, CONFIG.dataset)
    return x, x.astype(object).where(x.notna(), None).to_dict("records")


@pytest.fixture(scope="module")
def data(flights_frame):
    frame = flights_frame[flights_frame["arr_delay"].notna()].sample(20_000, random_state=1)
    y = (frame["arr_delay"] > 15).astype(int).to_numpy()
    return frame.iloc[:15_000], y[:15_000], frame.iloc[15_000:]


@pytest.mark.parametrize("estimator", ["hist_gradient_boosting", "logistic_regression"])
def test_the_served_predictor_matches_the_pipeline_exactly(data, estimator):
    train, y, test = data
    training = CONFIG.training.model_copy(update={"estimator": estimator})
    x_train, _ = records_of(train)
    pipeline = modeling.build_pipeline(CONFIG.dataset, training).fit(x_train, y)
    predictor, _ = choose_predictor(pipeline, SCHEMA, parity_rows(x_train.head(5), SCHEMA))
    assert predictor.runtime == ("lean-hgb" if estimator == "hist_gradient_boosting" else "sklearn")
    x_test, records = records_of(test)
    records[0] = {**records[0], "carrier": "ZZ", "dest": None}  # unseen and missing categories
    records[1] = {**records[1], "temp": None}
    x_test.iloc[0, x_test.columns.get_loc("carrier")] = "ZZ"
    x_test.iloc[0, x_test.columns.get_loc("dest")] = None
    x_test.iloc[1, x_test.columns.get_loc("temp")] = np.nan
    served = predictor.predict_proba(parse_records(records, SCHEMA, max_rows=10_000))
    assert np.max(np.abs(served - pipeline.predict_proba(x_test)[:, 1])) < 1e-12


def test_every_bad_field_is_named():
    good = dict.fromkeys(SCHEMA.numeric, 1.0) | dict.fromkeys(SCHEMA.categorical, "UA")
    bad = [
        {k: v for k, v in good.items() if k != "hour"},
        {**good, "temp": "hot", "origin": 3},
        {**good, "extra": 1},
        {**good, "visib": True},
        "not an object",
    ]
    with pytest.raises(InvalidInput) as caught:
        parse_records(bad, SCHEMA, max_rows=10)
    named = {tuple(e["loc"][1:]) for e in caught.value.errors}
    assert {(0, "hour"), (1, "temp"), (1, "origin"), (2, "extra"), (3, "visib"), (4,)} <= named
    with pytest.raises(InvalidInput, match="the limit is 2"):
        parse_records([good] * 3, SCHEMA, max_rows=2)


def test_a_predictor_that_disagrees_is_not_used(data):
    train, y, _ = data
    x_train, _ = records_of(train)
    pipeline = modeling.build_pipeline(CONFIG.dataset, CONFIG.training).fit(x_train, y)
    # corrupt one tree after the fact: the lean path now differs, the parity check must catch it
    import copy

    drifted = copy.deepcopy(pipeline)
    drifted.named_steps["model"]._predictors[0][0].nodes["value"] += 0.5
    original = PipelinePredictor(pipeline, SCHEMA)
    check = parity_rows(x_train.head(5), SCHEMA)
    chosen, gap = choose_predictor(_Mismatched(pipeline, drifted), SCHEMA, check)
    assert chosen.runtime == "sklearn" and gap > 1e-6
    assert np.allclose(chosen.predict_proba(check), original.predict_proba(check))


class _Mismatched:
    """The pipeline answers as trained, while its trees (read by the lean path) were altered."""

    def __init__(self, pipeline, drifted):
        self._pipeline, self.named_steps = pipeline, drifted.named_steps

    def predict_proba(self, frame):
        return self._pipeline.predict_proba(frame)


def _saved(pipeline, example, path):
    """The pipeline saved as the training step saves it: skops, signature, input example."""
    import mlflow.sklearn
    from mlflow.models import infer_signature

    from pipelines import model_format

    mlflow.sklearn.save_model(
        pipeline, str(path), signature=infer_signature(example, pipeline.predict_proba(example)),
        input_example=example, pyfunc_predict_fn="predict_proba", pip_requirements=["scikit-learn"],
        **model_format.save_options(pipeline),
    )  # fmt: skip
    return path


def test_the_parity_check_uses_the_models_saved_input_example(data, tmp_path):
    """Review 3, H2: a misspelt call (``loadinput_example``) raised AttributeError, which was
    swallowed: every parity check and infra validation compared one all-missing row."""
    from mlflow.models import Model

    from pipelines.serving.model import input_example

    train, y, _ = data
    x_train, _ = records_of(train)
    pipeline = modeling.build_pipeline(CONFIG.dataset, CONFIG.training).fit(x_train, y)
    path = _saved(pipeline, x_train.head(5), tmp_path / "m")
    used = input_example(Model.load(str(path / "MLmodel")), path, SCHEMA)
    assert len(used) == 5
    assert used["carrier"].tolist() == x_train.head(5)["carrier"].tolist()
    # and the lean predictor passes parity on those rows, with their variants
    from pipelines.serving.model import load_model_dir

    model = load_model_dir(str(path), name="m", version="1", threshold=None)
    assert model.runtime == "lean-hgb" and model.parity_gap is not None and model.parity_gap < 1e-9


def test_a_numeric_transform_the_lean_predictor_ignores_is_served_by_scikit_learn(data, tmp_path):
    """A pipeline whose numeric columns go through a function is not the one the lean predictor
    computes: it is refused on structure, before any parity rows are compared."""
    from sklearn.preprocessing import FunctionTransformer

    from pipelines.serving.model import load_model_dir

    train, y, test = data
    x_train, _ = records_of(train)
    pipeline = modeling.build_pipeline(CONFIG.dataset, CONFIG.training)
    pre = pipeline.named_steps["preprocess"]
    pre.transformers = [
        (name, FunctionTransformer(np.negative) if name == "num" else t, cols)
        for name, t, cols in pre.transformers
    ]
    pipeline.fit(x_train, y)
    path = _saved(pipeline, x_train.head(5), tmp_path / "m")
    model = load_model_dir(str(path), name="m", version="1", threshold=None)
    assert model.runtime == "sklearn"
    x_test, records = records_of(test.head(300))
    served = model.predict_proba(parse_records(records, SCHEMA, max_rows=10_000))
    assert np.max(np.abs(served - pipeline.predict_proba(x_test)[:, 1])) < 1e-12
