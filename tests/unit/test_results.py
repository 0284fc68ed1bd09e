"""The step contracts (pipelines/results.py): one result and one input type per step, checked at run time.

Every real result of every test that runs a step passes the runner's check (``execute_step``);
these tests pin the contract itself: it covers every step, matches the pipelines' wiring and
the steps' own signatures, and refuses a missing key, an undeclared key and a wrong type.
"""

from __future__ import annotations

import importlib
import inspect

import pytest

from pipelines import results
from pipelines.errors import PipelineError
from pipelines.pipeline import PIPELINES, STEP_NAMES, skipped
from pipelines.runner import check_result

INGESTED = {
    "snapshot_uri": "file:///store/ingest/snapshot.parquet",
    "rows": 10,
    "rows_in_interval": 4,
    "dropped_unlabelled": 1,
    "data_hash": "abc",
    "columns": ["carrier", "late"],
    "interval": {"start": "2013-03-01T00:00:00+00:00", "end": "2013-04-01T00:00:00+00:00"},
    "window": {"start": "2013-01-01T00:00:00+00:00", "end": "2013-04-01T00:00:00+00:00"},
}


def test_every_step_has_a_result_and_an_input_type():
    assert set(results.RESULT_TYPES) == set(STEP_NAMES)
    assert set(results.INPUT_TYPES) == set(STEP_NAMES)


def test_each_input_type_names_the_upstream_steps_its_pipelines_feed_it():
    fed: dict[str, set[frozenset[str]]] = {}
    for spec in PIPELINES.values():
        for step in spec:
            fed.setdefault(step.name, set()).add(frozenset(step.inputs))
    for name, wirings in fed.items():
        declared = results.INPUT_TYPES[name]
        keys, required = set(declared.__annotations__), set(declared.__required_keys__)
        for wiring in wirings:  # validate is fed ingest (training) or ingest_batch (batch)
            assert required <= wiring <= keys, (name, sorted(wiring), sorted(keys))


@pytest.mark.parametrize("name", STEP_NAMES)
def test_each_step_declares_its_contract_in_its_signature(name):
    run = importlib.import_module(f"pipelines.steps.{name}").run
    signature = inspect.signature(run)  # annotations are strings (from __future__ import annotations)
    assert signature.parameters["inputs"].annotation == results.INPUT_TYPES[name].__name__
    assert signature.return_annotation == f"{results.RESULT_TYPES[name].__name__} | Skipped"


def test_a_result_that_keeps_the_contract_passes():
    check_result("ingest", INGESTED)
    check_result("register", skipped("gate rejected: worse", registered=False))


@pytest.mark.parametrize(
    ("broken", "named"),
    [
        ({k: v for k, v in INGESTED.items() if k != "data_hash"}, "data_hash"),  # missing
        ({**INGESTED, "rows": "many"}, "rows"),  # wrong type
        ({**INGESTED, "window": {**INGESTED["window"], "tz": "UTC"}}, "window.tz"),  # undeclared, nested
        ({**INGESTED, "secret": "x"}, "secret"),  # undeclared
    ],
)
def test_a_result_that_breaks_the_contract_is_refused_with_the_key_named(broken, named):
    with pytest.raises(PipelineError, match="step ingest returned a result") as error:
        check_result("ingest", broken)
    assert named in str(error.value)


def test_a_skipped_result_with_an_unknown_detail_is_refused():
    with pytest.raises(PipelineError, match="surprise"):
        check_result("register", skipped("no", surprise=True))
