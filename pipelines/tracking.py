"""MLflow glue: one MLflow run per pipeline run, the registry's aliases, lineage tags.

Every step of a DAG run logs into the same MLflow run, found (or created) by
the tag ``mlops.run_key = {dag_id}/{run_id}``: a retried task or a re-run of
the same DAG run finds it again instead of creating a second one.
"""

from __future__ import annotations

import logging
import os
import subprocess
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines import __version__
from pipelines.context import StepContext
from pipelines.settings import Settings
from pipelines.storage import join

if TYPE_CHECKING:
    from mlflow import ActiveRun

RUN_KEY_TAG = "mlops.run_key"
CHAMPION, CHALLENGER = "champion", "challenger"

log = logging.getLogger(__name__)

# Quiet, offline-friendly defaults (read by MLflow when it acts); a user's own settings win.
for _name, _value in {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "GIT_PYTHON_REFRESH": "quiet",
    "MLFLOW_PRINT_MODEL_URLS_ON_CREATION": "false",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_RECORD_ENV_VARS_IN_MODEL_LOGGING": "false",
    # MLflow logs INFO to stderr, which Airflow's task log shows as errors.
    "MLFLOW_LOGGING_LEVEL": "WARNING",
}.items():
    os.environ.setdefault(_name, _value)

# skops probes modules by attribute name while (de)serialising; under Airflow that touches
# Airflow's deprecation shims, which warn on every access (1,000+ lines per run).
warnings.filterwarnings("ignore", module=r"skops\.io\._utils")


def client(settings: Settings):
    """An MlflowClient bound to the settings' tracking and registry URI."""
    import mlflow
    from mlflow import MlflowClient

    _create_sqlite_store_once(settings.tracking_uri)
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


_OPENED: set[str] = set()


def _create_sqlite_store_once(uri: str) -> None:
    """Open an embedded SQLite store under a file lock, once per process.

    MLflow creates and migrates the database in every process that finds it empty; two
    processes doing so at once (two models' first tasks under LocalExecutor, two ``mlops run``)
    collided on the migration ("Online migration expected to match one row"), and 7 of 9 such
    processes failed. The lock lets the first create it and the others find it made. A server
    or another database migrates in one place already (``mlflow server``, ``mlflow db upgrade``).
    """
    if not uri.startswith("sqlite:///") or uri in _OPENED:
        return
    import fcntl

    from mlflow import MlflowClient

    path = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
    if str(path) != ":memory:" and path.name:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            opened = MlflowClient(tracking_uri=uri, registry_uri=uri)
            opened.search_experiments(max_results=1)  # creates (and migrates) the tracking tables
            opened.search_registered_models(max_results=1)  # and the registry's
    _OPENED.add(uri)


def experiment_id(settings: Settings, name: str) -> str:
    """Find or create the experiment; without a server, keep its artifacts in the artifact root."""
    mlflow_client = client(settings)
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = join(settings.artifact_root, "mlflow", name) if settings.tracking_is_database else None
    try:
        return mlflow_client.create_experiment(name, artifact_location=location)
    except Exception:  # another process created it first
        found = mlflow_client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


@cache
def code_version() -> str:
    """The git commit of the project when run from a checkout, else the package version."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
        if sha.returncode == 0 and sha.stdout.strip():
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
            return sha.stdout.strip()[:12] + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return f"pipelines-{__version__}"


def find_or_create_run_id(ctx: StepContext, experiment: str | None = None) -> str:
    """The MLflow run of this pipeline run (one per DAG run, shared by every step)."""
    mlflow_client = client(ctx.settings)
    exp_id = experiment_id(ctx.settings, experiment or ctx.config.registry.experiment)
    found = mlflow_client.search_runs(
        [exp_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{ctx.run_key}'", max_results=1
    )
    if found:
        return found[0].info.run_id
    run = mlflow_client.create_run(
        exp_id,
        run_name=f"{ctx.dag_id}:{ctx.interval_end:%Y-%m-%d}:{ctx.run_id}"[:250],
        tags={
            RUN_KEY_TAG: ctx.run_key,
            "airflow.dag_id": ctx.dag_id,
            "airflow.run_id": ctx.run_id,
            "airflow.run_type": ctx.run_type,
            "data.interval_start": ctx.interval_start.isoformat(),
            "data.interval_end": ctx.interval_end.isoformat(),
            "code_version": code_version(),
            "dataset": ctx.config.dataset.name,
        },
    )
    return run.info.run_id


@contextmanager
def pipeline_run(ctx: StepContext, step: str, experiment: str | None = None) -> Iterator[ActiveRun]:
    """Resume this pipeline run's MLflow run for one step; a failing step marks it FAILED."""
    import mlflow

    run_id = find_or_create_run_id(ctx, experiment)
    with mlflow.start_run(run_id=run_id) as run:
        mlflow.set_tag("mlops.last_step", step)
        yield run


def champion_version(settings: Settings, model_name: str):
    """The model version behind the ``champion`` alias, or None when there is none yet."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client(settings)
    try:
        return mlflow_client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException as exc:
        if exc.error_code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}:
            return None
        # Behind MLflow's basic-auth app a model that does not exist yet answers 403, not 404
        # (there is no permission to look up): tell the two apart by searching for it.
        if exc.error_code == "PERMISSION_DENIED" and not mlflow_client.search_registered_models(
            filter_string=f"name = '{model_name}'"
        ):
            return None
        raise


def register_version(settings: Settings, name: str, model_uri: str, run_id: str, tags: dict[str, str]):
    """Create a model version (creating the registered model on first use)."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client(settings)
    try:
        mlflow_client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    return mlflow_client.create_model_version(
        name, source=model_uri, run_id=run_id, model_id=model_id, tags=tags, await_creation_for=0
    )
