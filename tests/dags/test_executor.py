"""The warm LocalExecutor: the step modules are imported before the workers fork.

Its effect through the real scheduler (the tasks of a backfill start with the modules loaded)
is checked in ``tests/e2e/test_scheduler_backfill.py``; the time it saves is in
``docs/development.md``.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

from mlops_demo import stack

PROBE = """
import json, sys
from mlops_airflow.executor import warm_up
before = {m for m in ("great_expectations", "mlflow", "pipelines.steps.train") if m in sys.modules}
failed = warm_up(("no_such_module_for_the_warm_up", *sys.argv[1:]))
after = {m for m in ("great_expectations", "mlflow", "pipelines.steps.train") if m in sys.modules}
print(json.dumps({"before": sorted(before), "after": sorted(after), "failed": failed}))
"""


def _probe(*modules: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *modules], capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_warm_up_imports_every_step_and_skips_a_module_that_fails():
    from mlops_airflow.executor import WARM_MODULES

    seen = _probe(*WARM_MODULES)
    assert seen["before"] == []  # a fresh interpreter: nothing was there to begin with
    assert seen["after"] == ["great_expectations", "mlflow", "pipelines.steps.train"]
    assert seen["failed"] == ["no_such_module_for_the_warm_up"]  # logged and skipped, not raised


def test_the_local_stack_and_the_production_profile_use_the_warm_executor(tmp_path):
    from mlops_airflow.executor import WarmLocalExecutor

    for env in (stack.stack_env(tmp_path), stack.load_profile(stack.ROOT / "profiles" / "production.env")):
        module, name = env["AIRFLOW__CORE__EXECUTOR"].rsplit(".", 1)  # as Airflow's executor loader does
        assert getattr(importlib.import_module(module), name) is WarmLocalExecutor, module
