"""Loading a model never runs code from the artifact: skops only, trusting the project's types only.

The artifacts here are built the way an attacker with write access to the registry would build
them: a valid MLflow model folder whose MLmodel asks for pickle (and whose pickle touches a
marker file when unpickled), and a skops model that allow-lists ``os.system`` in its own MLmodel.
"""

from __future__ import annotations

import json
import os
import pathlib
import pickle
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from pipelines import model_format
from pipelines.errors import UntrustedModel
from pipelines.serving.model import load_model_dir


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _frame() -> tuple[pd.DataFrame, np.ndarray]:
    x = pd.DataFrame({"hour": [1.0, 2.0, 3.0, 4.0], "distance": [100.0, 200.0, 300.0, 400.0]})
    return x, np.array([0, 1, 0, 1])


def _saved(path: pathlib.Path, model, x: pd.DataFrame | None = None, **options) -> pathlib.Path:
    """An MLflow model folder as ``log_model`` writes one (the signature needs no prediction)."""
    import mlflow.sklearn
    from mlflow.models import infer_signature

    x = _frame()[0] if x is None else x
    signature = infer_signature(x, np.zeros((len(x), 2)))
    # requirements given, as pipelines.model_format gives them: MLflow would otherwise start a Python
    # process per save to find the imported modules (~5 s of CPU each)
    reqs = ["scikit-learn"]
    mlflow.sklearn.save_model(
        model, str(path), signature=signature, input_example=x, pip_requirements=reqs, **options
    )
    return path


def _fitted(*steps):
    """A fitted model, with ``steps`` put in front of it unfitted (a hook never runs here)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    x, y = _frame()
    return Pipeline([*steps, ("model", LogisticRegression().fit(x, y))])


def test_a_model_that_asks_for_pickle_is_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "code-ran"
    path = _saved(tmp_path / "model", _fitted(), serialization_format="pickle")
    (path / "model.pkl").write_bytes(pickle.dumps(_RunsCodeWhenUnpickled(marker)))
    with pytest.raises(UntrustedModel, match="asks to be loaded as 'pickle'; only 'skops' is loaded"):
        load_model_dir(path, name="hostile", version="2", threshold=None)
    assert not marker.exists()


def test_a_skops_model_cannot_allow_list_types_for_itself(tmp_path):
    """Its MLmodel trusts ``os.system`` (a FunctionTransformer would call it on every request)."""
    from sklearn.preprocessing import FunctionTransformer

    model = _fitted(("hook", FunctionTransformer(os.system)))
    path = _saved(
        tmp_path / "model", model, serialization_format="skops", skops_trusted_types=["posix.system"]
    )
    flavor = yaml.safe_load((path / "MLmodel").read_text())["flavors"]["sklearn"]
    assert flavor["skops_trusted_types"] == ["posix.system"]  # what MLflow's own loader would trust
    with pytest.raises(UntrustedModel, match=r"holds types this project does not trust: \['posix.system'\]"):
        load_model_dir(path, name="hostile", version="3", threshold=None)


def test_a_model_file_outside_its_folder_or_not_skops_is_refused(tmp_path):
    path = _saved(tmp_path / "model", _fitted(), serialization_format="skops")
    meta = yaml.safe_load((path / "MLmodel").read_text())
    meta["flavors"]["sklearn"]["pickled_model"] = "../elsewhere.skops"
    (path / "MLmodel").write_text(yaml.safe_dump(meta))
    with pytest.raises(UntrustedModel, match="is not a file inside"):
        model_format.load_pipeline(path)
    meta["flavors"]["sklearn"]["pickled_model"] = "model.skops"
    (path / "MLmodel").write_text(yaml.safe_dump(meta))
    (path / "model.skops").write_bytes(b"not a zip archive")
    with pytest.raises(UntrustedModel, match="is not a readable skops file"):
        model_format.load_pipeline(path)


def test_training_refuses_to_save_a_model_with_types_nobody_reviewed():
    from sklearn.preprocessing import FunctionTransformer

    with pytest.raises(UntrustedModel, match=r"posix\.system"):
        model_format.save_options(_fitted(("hook", FunctionTransformer(os.system))))


@pytest.mark.parametrize("estimator", ["hist_gradient_boosting", "logistic_regression"])
def test_every_model_the_project_trains_saves_and_loads_within_the_allow_list(
    tmp_path, flights_frame, estimator
):
    """The list in code covers what the pipelines make: both estimators, fresh and continued."""
    from conftest import DEFAULT_CONFIG
    from pipelines import modeling
    from pipelines.config import load_config

    config = load_config(DEFAULT_CONFIG, {"estimator": estimator})
    rows = flights_frame[flights_frame["arr_delay"].notna()].head(3000)
    x, y = modeling.model_input(rows, config.dataset), (rows["arr_delay"] > 15).to_numpy()
    fresh = modeling.build_pipeline(config.dataset, config.training).fit(x, y)
    for i, model in enumerate([fresh, modeling.continue_training(fresh, x, y, 3)]):
        path = _saved(tmp_path / f"m{i}", model, x.head(5), **model_format.save_options(model))
        loaded = model_format.load_pipeline(path)
        assert np.allclose(loaded.predict_proba(x), model.predict_proba(x))


def test_a_model_file_that_decompresses_past_the_limit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    """Review 3, M1: skops reads every array to list the types, so a small file of compressed zeros
    next to a refused type still made the server allocate its full size (3.3 GB from 1.6 MB) and a
    pod over its memory limit crash-looped. The archive's sizes are checked first."""
    import zipfile

    import skops.io

    path = _saved(tmp_path / "model", _fitted(), serialization_format="skops")
    flavor = yaml.safe_load((path / "MLmodel").read_text())["flavors"]["sklearn"]
    bomb = {"payload": np.zeros(4 * 2**20), "evil": os.system}  # 32 MiB of zeros, a few KB on disk
    skops.io.dump(bomb, path / flavor["pickled_model"], compression=zipfile.ZIP_DEFLATED, compresslevel=9)
    assert (path / flavor["pickled_model"]).stat().st_size < 2**20
    monkeypatch.setenv("MLOPS_MODEL_MAX_BYTES", str(8 * 2**20))
    with pytest.raises(
        UntrustedModel, match=r"decompresses to 32 MiB .* the limit is 8 MiB \(MLOPS_MODEL_MAX_BYTES\)"
    ):
        load_model_dir(path, name="hostile", version="4", threshold=None)
    # under the default limit the same file gets to the type audit, which refuses os.system
    monkeypatch.delenv("MLOPS_MODEL_MAX_BYTES")
    with pytest.raises(UntrustedModel, match=r"posix\.system"):
        load_model_dir(path, name="hostile", version="4", threshold=None)


def _skops_default_trust(recorded: bool) -> dict[str, Any]:
    """skops' default trusted estimator names in a fresh interpreter: imported as the project does
    (the recorded list) or as skops alone does (its walk over scikit-learn)."""
    import json
    import subprocess
    import sys

    load = "model_format.skops_io()" if recorded else "import skops.io"
    code = (
        f"from pipelines import model_format; {load}; import sys; "
        "from skops.io._trusted_types import SKLEARN_ESTIMATOR_TYPE_NAMES as names; "
        "modules = sum(m.startswith('sklearn') for m in sys.modules); "
        "import json; print(json.dumps({'names': names, 'modules': modules}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_recorded_estimators_give_skops_its_own_default_trust_list():
    """The recorded list is for the scikit-learn installed (`make lock` rewrites it) and gives skops
    exactly the names its own import computes, without importing every scikit-learn module."""
    import sklearn

    stale = f"{model_format.KNOWN_ESTIMATORS.name} is not for scikit-learn {sklearn.__version__}: make lock"
    assert model_format.known_estimators() is not None, stale
    recorded, walked = _skops_default_trust(recorded=True), _skops_default_trust(recorded=False)
    assert len(walked["names"]) > 150 and recorded["names"] == walked["names"]
    # the walk imports ~140 scikit-learn modules that loading a model never needs
    assert recorded["modules"] < walked["modules"] - 100, (recorded["modules"], walked["modules"])


@pytest.mark.parametrize(
    "content",
    [
        '{"versions": {"scikit-learn": "0.0.1", "skops": "0.16.0"}, "estimators": [["M", "sklearn.m", "M"]]}',
        '{"estimators": [["M", "sklearn.m", "M"]]}',
        "[1, 2]",
        "not json",
    ],
    ids=["another-version", "no-versions", "a-list", "not-json"],
)
def test_a_recording_for_another_version_or_unreadable_falls_back_to_skops_own_walk(
    tmp_path, monkeypatch, content
):
    """Only a recording for the installed scikit-learn and skops is used; anything else: skops' walk."""
    stale = tmp_path / "sklearn_estimators.json"
    stale.write_text(content)
    monkeypatch.setattr(model_format, "KNOWN_ESTIMATORS", stale)
    assert model_format.known_estimators() is None


def test_an_entry_outside_scikit_learn_is_not_taken(tmp_path, monkeypatch):
    """The recording can only name scikit-learn classes: one that names another module is ignored."""
    recorded = json.loads(model_format.KNOWN_ESTIMATORS.read_text())
    recorded["estimators"].append(["System", "os", "system"])
    forged = tmp_path / "sklearn_estimators.json"
    forged.write_text(json.dumps(recorded))
    monkeypatch.setattr(model_format, "KNOWN_ESTIMATORS", forged)
    assert model_format.known_estimators() is None


def test_threads_importing_skops_at_once_all_get_the_whole_module():
    """A model server loads models on several threads at start-up: each gets a complete skops.io, and
    scikit-learn's own ``all_estimators`` is back afterwards."""
    import subprocess
    import sys

    code = (
        "import sys, threading, time; from pipelines import model_format\n"
        "got = []\n"
        "def early():  # asks while the first thread's import is under way\n"
        "    while 'skops.io' not in sys.modules: time.sleep(0.0005)\n"
        "    got.append(hasattr(model_format.skops_io(), 'load'))\n"
        "threads = [threading.Thread(target=early)]\n"
        "threads += [threading.Thread(target=lambda: got.append(hasattr(model_format.skops_io(), 'load')))]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "import sklearn.utils, sklearn.utils.discovery\n"
        "assert got == [True, True], got  # the old code gave the early thread a module without load()\n"
        "assert sklearn.utils.all_estimators is sklearn.utils.discovery.all_estimators\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
