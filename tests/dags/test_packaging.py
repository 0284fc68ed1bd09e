"""The project installs with pip, and Airflow finds its plugin and DAGs with no PYTHONPATH edits.

The wheel is built from a copy of the sources (setuptools writes ``build/`` beside them), installed
into a new virtualenv with ``--no-deps``, and the pinned dependencies are lent by this test's
environment through a ``.pth`` line to a folder of links to its packages, the project's own
distribution left out (a full dependency install would repeat ``make install``). Airflow then runs
in that venv, outside the checkout, with an empty plugins folder: what it finds comes from the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENTRY_POINT = "mlops = mlops_airflow.plugin:MlopsPlugin"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src)
    for package in ("pipelines", "mlops_airflow", "mlops_demo", "dags", "plugins"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"]  # builds as `pip install .` does
    subprocess.run([*build, "-w", str(out), str(src)], check=True, capture_output=True, timeout=300)
    (built,) = out.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def clean_venv(wheel, tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("venv")
    venv.create(home / "venv", with_pip=False)
    python = home / "venv" / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps"]
    # no PYTHONPATH: with the checkout on it, pip would call the project installed already
    subprocess.run([*pip, str(wheel)], check=True, capture_output=True, timeout=300, env=clean_env())
    purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site = Path(subprocess.check_output([str(python), "-c", purelib], text=True).strip())
    # the dependencies, lent: this environment's packages, all but the project's own distribution
    lent = home / "lent"
    lent.mkdir()
    for entry in Path(sysconfig.get_path("purelib")).iterdir():
        if not entry.name.startswith(("mlops_airflow", "__editable__", "pipelines")):
            (lent / entry.name).symlink_to(entry)
    (site / "zz_lent_dependencies.pth").write_text(f"{lent}\n")
    return python


def clean_env() -> dict[str, str]:
    """This environment without Airflow's settings and without ``PYTHONPATH`` (the checkout)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTHON"))}


def in_venv(python: Path, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``python ARGS`` outside the checkout, with a fresh Airflow home and an empty plugins folder."""
    env = clean_env()
    env.update(
        AIRFLOW_HOME=str(tmp_path / "airflow"),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(tmp_path / "no-plugins"),
        AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        MLOPS_HOME=str(tmp_path / "mlops"),
    )
    return subprocess.run([str(python), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def test_the_wheel_holds_the_library_the_cli_and_the_airflow_package_but_not_the_demo(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for member in ("pipelines/cli.py", "pipelines/datasets/flights.yaml", "mlops_airflow/plugin.py"):
        assert member in names, member
    assert not [n for n in names if n.startswith(("mlops_demo/", "tests/", "dags/", "plugins/"))], names
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[airflow.plugins]" in text and ENTRY_POINT in text, text
    assert "mlops = pipelines.cli:main" in text, text


def test_airflow_in_a_clean_venv_finds_the_plugin_through_its_entry_point(clean_venv, tmp_path):
    where = in_venv(clean_venv, ["-c", "import mlops_airflow.plugin as p; print(p.__file__)"], tmp_path)
    assert where.returncode == 0, where.stderr[-2000:]
    assert Path(where.stdout.strip()).is_relative_to(clean_venv.parents[1]), where.stdout  # the wheel's
    no_demo = in_venv(clean_venv, ["-c", "import mlops_demo"], tmp_path)
    assert no_demo.returncode != 0 and "No module named 'mlops_demo'" in no_demo.stderr, no_demo.stderr

    listed = in_venv(clean_venv, ["-m", "airflow", "plugins", "--output", "json"], tmp_path)
    assert listed.returncode == 0, listed.stderr[-2000:]
    plugins = json.loads(listed.stdout[listed.stdout.index("[") :])
    (mlops,) = [p for p in plugins if p["name"] == "mlops"]  # once, though two dist-infos are visible
    assert "airflow.plugins" in mlops["source"], mlops["source"]
    assert mlops["timetables"] == ["mlops_airflow.schedules.DataSpanTimetable"]
    assert [app["url_prefix"] for app in mlops["fastapi_apps"]] == ["/mlops"]


PARSE_AND_SERIALIZE = """
import json
from airflow.dag_processing.dagbag import DagBag
from airflow.serialization.serialized_objects import DagSerialization
bag = DagBag()
for dag in bag.dags.values():
    # what the scheduler does: a custom timetable round-trips only when a plugin registered it
    DagSerialization.from_dict(DagSerialization.to_dict(dag))
print(json.dumps({"errors": bag.import_errors, "dags": sorted(bag.dags)}))
"""


def test_the_dags_parse_and_serialize_in_the_clean_venv(clean_venv, tmp_path):
    parsed = in_venv(clean_venv, ["-c", PARSE_AND_SERIALIZE], tmp_path)
    assert parsed.returncode == 0, parsed.stderr[-3000:]
    result = json.loads(parsed.stdout.strip().splitlines()[-1])
    assert result["errors"] == {}, result["errors"]
    every_dag = {"training", "deploy", "monitoring", "batch_inference", "features", "rollback"}
    assert set(result["dags"]) >= every_dag, result["dags"]
