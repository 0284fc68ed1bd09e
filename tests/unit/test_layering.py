"""The layering contracts of ``pyproject.toml`` hold on this tree, and break on each kind of violation.

``make lint`` runs import-linter with them; here a copy of the three packages gets one forbidden
import at a time (Airflow in the library, the demo in the Airflow integration, a step imported below
the steps, a circle between two siblings) and the linter must name the contract it breaks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
AIRFLOW_FREE = "pipelines is free of Airflow"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_tree_keeps_every_contract():
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "Contracts: 4 kept, 0 broken." in done.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("pipelines/drift.py", "import airflow.sdk", AIRFLOW_FREE),
        ("pipelines/gate.py", "from mlops_airflow import execution", AIRFLOW_FREE),
        (
            "mlops_airflow/plugin.py",
            "from mlops_demo import stack",
            "the Airflow integration never imports the demo",
        ),
        (
            "pipelines/monitoring.py",
            "from pipelines.steps import ingest",
            "only the runner imports pipelines.steps",
        ),
        (
            "pipelines/storage.py",
            "from pipelines import tracking",
            "no import circles between sibling modules",
        ),
    ],
)
def test_a_forbidden_import_breaks_its_contract(tmp_path, module, line, contract):
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    shutil.copytree(ROOT / "pipelines", tmp_path / "pipelines", ignore=shutil.ignore_patterns("__pycache__"))
    for package in ("mlops_airflow", "mlops_demo"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    assert lint_imports(tmp_path).returncode == 0  # the copy is as clean as the tree
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    done = lint_imports(tmp_path)
    assert done.returncode == 1, done.stdout[-3000:]
    broken = [line for line in done.stdout.splitlines() if " BROKEN" in line]
    assert broken and any(line.startswith(contract) for line in broken), done.stdout[-3000:]
