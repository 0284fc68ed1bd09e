"""The embedded local stack: Airflow on SQLite, MLflow on SQLite, artifacts on disk.

    python -m mlops_demo.stack demo    # train Jan-Mar 2013 and score April through Airflow
    python -m mlops_demo.stack up      # Airflow :8080, MLflow :5000, model server :8000
    python -m mlops_demo.stack down

Everything lives under ``MLOPS_HOME`` (default ``<repo>/.mlops``). The Makefile
wraps these. Airflow reads its configuration at import, so the environment is
set before anything imports it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from pipelines import processes, registry_auth, util

ROOT = Path(__file__).resolve().parents[1]
AIRFLOW_PORT = int(os.environ.get("MLOPS_AIRFLOW_PORT", "8080"))
MLFLOW_PORT = int(os.environ.get("MLOPS_MLFLOW_PORT", "5000"))
SERVING_PORT = int(os.environ.get("MLOPS_SERVING_PORT", "8000"))


PROFILE_ENV = "MLOPS_PROFILE"


def load_profile(path: str | Path) -> dict[str, str]:
    """A profile file: ``KEY=VALUE`` lines (dotenv syntax, ``${VAR}`` expanded from the environment)."""
    from dotenv import dotenv_values

    if not Path(path).is_file():
        raise FileNotFoundError(f"{PROFILE_ENV}={path}: no such profile file")
    return {k: v for k, v in dotenv_values(path, interpolate=True).items() if v is not None}


def stack_env(home: Path | None = None, root: Path = ROOT) -> dict[str, str]:
    """Environment of every process of the local stack (scheduler, tasks, demo, tests).

    ``MLOPS_PROFILE=profiles/production.env`` switches profile: its variables (Airflow's and
    MLflow's databases on PostgreSQL, the artifact store on S3, the prediction log table)
    override the embedded defaults.
    """
    home = Path(home or os.environ.get("MLOPS_HOME") or root / ".mlops").resolve()
    bin_dir = str(Path(sys.executable).parent)
    profile = load_profile(os.environ[PROFILE_ENV]) if os.environ.get(PROFILE_ENV) else {}
    if profile and not (profile.get("MLFLOW_TRACKING_URI") or os.environ.get("MLFLOW_TRACKING_URI")):
        profile["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{MLFLOW_PORT}"  # through the server
    return {**_embedded_env(home, root, bin_dir), **profile}


def _embedded_env(home: Path, root: Path, bin_dir: str) -> dict[str, str]:
    return {
        "MLOPS_HOME": str(home),
        "AIRFLOW_HOME": str(home / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(root / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "mlops_airflow.executor.WarmLocalExecutor",  # executor.py
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__API__PORT": str(AIRFLOW_PORT),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{AIRFLOW_PORT}/execution/",
        # the project's packages are installed (the plugin through its entry point); the checkout's
        # root on the path is for the demo tooling, which Airflow never imports
        "PYTHONPATH": os.pathsep.join(p for p in [str(root), os.environ.get("PYTHONPATH")] if p),
        "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
    }


def _apply_env(home: Path | None = None) -> dict[str, str]:
    env = stack_env(home)
    os.environ.update(env)
    for path in env["PYTHONPATH"].split(os.pathsep):
        if path not in sys.path:
            sys.path.insert(0, path)
    return env


def unpause_pattern(dag_ids: Iterable[str]) -> str:
    """The regex of these DAGs and of every catalogue model's copy of them (``training__<model>``)."""
    return "^(" + "|".join(re.escape(d) for d in dag_ids) + ")(__[a-z0-9_]+)?$"


def unpause(dag_ids: Iterable[str], env: dict[str, str], check: bool = True) -> None:
    """Unpause these DAGs (each model's, with a catalogue), in one Airflow command (each pays ~3 s)."""
    pattern = unpause_pattern(dag_ids)
    cmd = ["airflow", "dags", "unpause", "--yes", "--treat-dag-id-as-regex", pattern]
    subprocess.run(cmd, env=env, check=check, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def migrate() -> None:
    """Create or upgrade Airflow's metadata database (idempotent, ~5 s)."""
    subprocess.run(["airflow", "db", "migrate"], check=True, stdout=subprocess.DEVNULL)


def run_training(months: list[str], conf: dict | None = None) -> list:
    """Run the training DAG once per month through Airflow (``dag.test``), oldest first."""
    import pendulum
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    if bag.import_errors:
        raise SystemExit(f"DAG import errors: {bag.import_errors}")
    dag = bag.get_dag("training")
    tz = dag.timezone
    runs = []
    for i, month in enumerate(months, 1):
        # A manual run at logical date D gets the last complete interval before D.
        logical = pendulum.parse(f"{month}-01", tz=tz).add(months=1)
        print(
            f"[{i}/{len(months)}] training run for {month} (window ends {logical:%Y-%m-%d}) ...", flush=True
        )
        started = time.time()
        run = dag.test(logical_date=logical, run_conf=conf or None)
        states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
        print(
            f"[{i}/{len(months)}] {month}: run {run.state} in {time.time() - started:.0f}s  {states}",
            flush=True,
        )
        runs.append(run)
    return runs


def run_batch(month: str):
    """Score one month with the champion through the batch-inference DAG (``dag.test``)."""
    import pendulum
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"]).dags["batch_inference"]
    logical = pendulum.parse(f"{month}-01", tz=dag.timezone).add(months=1)
    print(f"[batch] scoring {month} with the champion ...", flush=True)
    started = time.time()
    run = dag.test(logical_date=logical)
    print(f"[batch] {month}: run {run.state} in {time.time() - started:.0f}s", flush=True)
    return run


def summary(runs: list) -> str:
    """Where to look: each run's MLflow run, gate decision, reports; the registry's aliases."""
    from pipelines import tracking
    from pipelines.config import load_config
    from pipelines.settings import Settings
    from pipelines.storage import step_dir

    settings = Settings.from_env()
    config = load_config(settings.config_path)
    client = tracking.client(settings)
    lines = ["", "Training runs (Airflow, dag_id=training):"]
    for run in runs:
        lines.append(f"  {run.run_id}: {run.state}")
        evaluation = Path(step_dir(settings.artifact_root, run.dag_id, run.run_id, "evaluate"))
        validation = Path(step_dir(settings.artifact_root, run.dag_id, run.run_id, "validate"))
        if (evaluation / "evaluation.json").exists():
            ev = json.loads((evaluation / "evaluation.json").read_text())
            verdict = "passed" if ev["decision"]["passed"] else "rejected"
            lines.append(f"    gate {verdict}: {ev['decision']['reason']}")
            lines.append(f"    comparison report: {evaluation / 'comparison.html'}")
        lines.append(f"    validation report: {validation / 'validation.json'}")
        lines.append(f"    data docs:         {validation / 'data_docs' / 'index.html'}")
    name = config.registry.model_name
    try:
        model = client.get_registered_model(name)
        versions = client.search_model_versions(f"name = '{name}'")
    except Exception:  # nothing registered yet
        model, versions = None, []
    lines.append(f"\nRegistry ({settings.tracking_uri}):")
    for version in sorted(versions, key=lambda v: int(v.version)):
        aliases = [a for a, v in (model.aliases if model else {}).items() if str(v) == str(version.version)]
        tags = version.tags
        lines.append(
            f"  {name} v{version.version} {aliases or ''} test ROC AUC {tags.get('test.roc_auc', '?')}"
            f", data {tags.get('data_hash', '?')[:12]}, MLflow run {version.run_id}"
        )
    if not versions:
        lines.append("  no model version registered")
    lines += [
        "",
        "Serve the champion:         make serve   (then: curl http://127.0.0.1:8000/ready)",
        "Open the UIs on this data:  make up      (Airflow :8080, MLflow :5000, model server :8000)",
        "Stop them:                  make down",
    ]
    return "\n".join(lines)


def demo(args: argparse.Namespace) -> int:
    _apply_env()
    import warnings

    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    print(f"MLOPS_HOME={os.environ['MLOPS_HOME']}; preparing Airflow's metadata database ...", flush=True)
    migrate()
    runs = run_training(util.months(args.first, args.last))
    batch = run_batch(args.score) if args.score else None
    print(summary(runs))
    if batch is not None:
        score = next(ti for ti in batch.get_task_instances() if ti.task_id == "score")
        result = score.xcom_pull(task_ids="score") if str(score.state) == "success" else None
        if result:
            print(
                f"\nBatch inference ({args.score}): {result['rows']} flights scored by "
                f"{result['model_name']} v{result['model_version']} -> {result['predictions_uri']}"
            )
    ok = all(str(r.state) == "success" for r in runs) and (batch is None or str(batch.state) == "success")
    return 0 if ok else 1


# -- up / down: the UIs -------------------------------------------------------------------------


def _run_dir() -> Path:
    return Path(os.environ["MLOPS_HOME"]) / "run"


def mlflow_server_cmd(home: Path, port: int, env: dict[str, str] | None = None) -> list[str]:
    """The MLflow tracking server (one worker: two processes, not fifteen).

    Embedded: SQLite and local artifacts under ``home``. A profile sets
    ``MLFLOW_BACKEND_STORE_URI`` (PostgreSQL), ``MLFLOW_ARTIFACTS_DESTINATION`` (``s3://...``) and
    ``MLOPS_MLFLOW_AUTH=basic`` (MLflow's basic-auth app, see ``registry_auth``).
    """
    env = os.environ if env is None else env
    # A database URI holds its password: MLflow reads MLFLOW_BACKEND_STORE_URI from the
    # environment itself, so it never shows on the command line (ps, /proc/*/cmdline).
    store = (
        []
        if env.get("MLFLOW_BACKEND_STORE_URI")
        else ["--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}"]
    )
    return [
        "mlflow", "server", *registry_auth.server_args(env), *store,
        "--artifacts-destination",
        env.get("MLFLOW_ARTIFACTS_DESTINATION") or str(home / "artifacts" / "mlflow-server"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip


def start_registry(start, home: Path, port: int, env: dict[str, str]) -> bool:
    """Start the MLflow server with ``start(name, cmd, env)``; once it answers, its users exist."""
    start("mlflow", mlflow_server_cmd(home, port, env), registry_auth.server_env(home, env))
    if not processes.wait_http(f"http://127.0.0.1:{port}/health", 120):
        return False
    registry_auth.ensure_users(f"http://127.0.0.1:{port}", env)
    registry_auth.claim(f"http://127.0.0.1:{port}", env, registry_auth.configured_names(env))
    return True


def running() -> dict[str, int]:
    """The services of this ``MLOPS_HOME`` that a ``make up`` started and that still run."""
    alive = {}
    for pid_file in sorted(_run_dir().glob("*.pid")):
        try:
            pgid = int(pid_file.read_text())
        except (OSError, ValueError):
            continue
        if processes.group_alive(pgid):
            alive[pid_file.stem] = pgid
    return alive


def up(args: argparse.Namespace) -> int:
    env = {**os.environ, **_apply_env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    home = Path(env["MLOPS_HOME"])
    if already := running():  # a second start would overwrite their pid files: `make down` would miss them
        listed = ", ".join(f"{name} (process group {pgid})" for name, pgid in already.items())
        print(f"the stack of {home} is already up: {listed}; `make down` stops it", file=sys.stderr)
        return 1
    registry_auth.server_env(home, env)  # a missing secret stops here, before anything starts
    migrate()
    subprocess.run(["airflow", "dags", "reserialize"], env=env, check=True, stdout=subprocess.DEVNULL)
    # a registered challenger then flows on to deploy by itself
    unpause(("training", "deploy"), env, check=False)
    # MLflow first: it creates or upgrades its database, which nobody else may touch meanwhile.
    # ``make down`` stops them by the process-group ids left in the run folder
    services = processes.Supervisor(logs=home / "logs", env=env, pid_dir=_run_dir())
    _start = services.start
    ok_mlflow = start_registry(_start, home, MLFLOW_PORT, env)
    # Each process holds only its own credentials: the pipeline writes, the model server reads.
    _start("airflow", ["airflow", "standalone"], registry_auth.as_role(env, "pipeline"))
    serve = [sys.executable, "-m", "pipelines.cli", "serve", "--port", str(SERVING_PORT)]
    # The server follows the registry through the tracking server, as a replica would in production.
    tracking_server = f"http://127.0.0.1:{MLFLOW_PORT}"
    server_env = registry_auth.as_role(env, "server")
    _start("server", serve, {**server_env, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": tracking_server})
    ok_airflow = processes.wait_http(f"http://127.0.0.1:{AIRFLOW_PORT}/api/v2/monitor/health", 120)
    ok_server = processes.wait_http(f"http://127.0.0.1:{SERVING_PORT}/health", 60)
    print(f"MLflow  UI:   http://127.0.0.1:{MLFLOW_PORT}  {'ready' if ok_mlflow else 'NOT READY (see log)'}")
    print(
        f"Airflow UI:   http://127.0.0.1:{AIRFLOW_PORT}  {'ready' if ok_airflow else 'NOT READY (see log)'}"
    )
    print(f"Model server: http://127.0.0.1:{SERVING_PORT}  {'up' if ok_server else 'NOT UP (see log)'}"
          " (ready once a champion exists: GET /ready)")  # fmt: skip
    print("Trigger 'training' with the params form (Trigger DAG), e.g. interval_end 2013-06-01.")
    return 0 if ok_mlflow and ok_airflow and ok_server else 1


def down(args: argparse.Namespace) -> int:
    _apply_env()
    for name in ("server", "airflow", "mlflow"):
        pid_file = _run_dir() / f"{name}.pid"
        if not pid_file.exists():
            continue
        # airflow standalone stops cleanly on SIGINT only; its workers may linger, hence SIGKILL after.
        processes.stop_group(int(pid_file.read_text()), first=signal.SIGINT, grace=20)
        pid_file.unlink(missing_ok=True)
        print(f"stopped {name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlops_demo.stack")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("demo", help="train through Airflow on the bundled data, then print where to look")
    run.add_argument("--first", default="2013-01", help="first monthly interval (YYYY-MM)")
    run.add_argument("--last", default="2013-03", help="last monthly interval (YYYY-MM)")
    run.add_argument("--score", default="2013-04", help="month to score with the champion ('' to skip)")
    run.set_defaults(func=demo)
    sub.add_parser("up", help="start the Airflow and MLflow UIs").set_defaults(func=up)
    sub.add_parser("down", help="stop them").set_defaults(func=down)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
