"""The closed loop on real history, through the real Airflow scheduler: the project's main job.

    python -m mlops_demo.loop                    # flights: train on Jan-Mar 2013, replay Apr-Dec
    python -m mlops_demo.loop --last 2013-05     # a shorter replay (the CI test runs two months)
    MLOPS_CONFIG=my.yaml python -m mlops_demo.loop   # any dataset with a time column: its span's
                                                 # first three months train, the rest is replayed

It starts the stack (MLflow server, Airflow scheduler + API server + DAG
processor + triggerer, the model server), trains the first champion through the
``training`` DAG and lets ``deploy`` put it live. Then, month by month, it sends
that month's rows to the model server as traffic (each request carries the
rows' time as ``event_time``), posts the true outcomes as
feedback, and triggers the ``monitoring`` DAG for the month. Everything after
that is the system's own doing: drift or decay emits the retrain Asset event,
the scheduler starts ``training`` on it, the gate and the ``deploy`` rollout
decide, and the server swaps models while traffic flows. It ends with a
month-by-month table against a "never retrain" baseline, and an HTML report.

Time-based schedules are off for this stack (``MLOPS_TIME_SCHEDULES=off``): a
replay of 2013 must not also start the cron runs of 2013.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from mlops_demo import stack
from mlops_demo.airflow_api import Airflow
from mlops_demo.console import say
from mlops_demo.loop_report import row_text, write_results
from mlops_demo.traffic import month_rows, post_feedback, replay, score_auc
from pipelines import processes, registry_auth, util

DAGS = ("training", "deploy", "monitoring")
MARKER = ".mlops-home"  # a folder --fresh may wipe: only one this module created
# what the stack writes into MLOPS_HOME (a home from before the marker existed holds only these)
KNOWN_ENTRIES = {MARKER, "airflow", "artifacts", "mlflow.db", "logs", "serving", "run", "loop-config.yaml"}


# -- configuration --------------------------------------------------------------------------------


def loop_config(home: Path, base: Path, swing_band: float | None = None) -> Path:
    """The bundled config with the loop's pace: the rollout sensor pokes every 5 s, and the
    rollout test asks for a 5-point effect, so a 10% canary decides within a month of traffic."""
    import yaml

    data = yaml.safe_load(base.read_text())
    data["base_dir"] = str(base.parent.resolve())
    rollout = data.setdefault("deploy", {}).setdefault("rollout", {})
    rollout.update({"poke_seconds": 5, "min_detectable_effect": 0.05})
    if swing_band is not None:  # a narrow band sends every retrained candidate to a person
        data.setdefault("gate", {})["swing_band"] = swing_band
    path = home / "loop-config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# -- the stack ------------------------------------------------------------------------------------

AIRFLOW = (
    "airflow api-server -H 127.0.0.1 -p $AIRFLOW__API__PORT -w 1 & "
    "airflow dag-processor & airflow scheduler & airflow triggerer & wait"
)


def start_stack(home: Path, ports: dict[str, int]) -> tuple[processes.Supervisor, dict[str, str]]:
    env = {
        **os.environ,
        **stack.stack_env(home),
        "AIRFLOW__API__PORT": str(ports["airflow"]),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{ports['airflow']}/execution/",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
        "AIRFLOW__API_AUTH__JWT_SECRET": os.environ.get(
            "AIRFLOW__API_AUTH__JWT_SECRET", os.urandom(16).hex()
        ),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "MLOPS_TIME_SCHEDULES": "off",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    if os.environ.get(stack.PROFILE_ENV):  # the profile's stores; every process goes through MLflow's server
        env["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{ports['mlflow']}"
    else:  # the loop's own embedded stores, whatever the calling shell points at
        env.update(
            MLFLOW_TRACKING_URI=f"sqlite:///{home / 'mlflow.db'}",
            MLOPS_ARTIFACT_ROOT=str(home / "artifacts"),
            MLOPS_PREDICTION_LOG="",
        )
    run = processes.Supervisor(logs=home / "logs", env=env, say=say)
    say("preparing Airflow's metadata database and DAGs ...")
    subprocess.run(["airflow", "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["airflow", "dags", "reserialize"], env=env, check=True, stdout=subprocess.DEVNULL)
    stack.unpause(DAGS, env)
    # MLflow first: it creates or upgrades its database, which nobody else may touch meanwhile.
    if not stack.start_registry(run.start, home, ports["mlflow"], env):
        raise SystemExit(f"MLflow did not start: see {home / 'logs' / 'mlflow.log'}")
    # Each process holds only its own credentials: the pipeline writes, the model server reads.
    run.start("airflow", ["bash", "-c", AIRFLOW], registry_auth.as_role(env, "pipeline"))
    serve = [sys.executable, "-m", "pipelines.cli", "serve", "--port", str(ports["server"])]
    run.start(
        "server",
        serve,
        {
            **registry_auth.as_role(env, "server"),
            "OMP_NUM_THREADS": "1",
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{ports['mlflow']}",
            "MLOPS_SERVING_POLL_SECONDS": "2",
        },
    )
    for name, url in (
        ("Airflow", f"http://127.0.0.1:{ports['airflow']}/api/v2/monitor/health"),
        ("model server", f"http://127.0.0.1:{ports['server']}/health"),
    ):
        if not processes.wait_http(url, 180):
            run.stop()
            raise SystemExit(f"{name} did not start: see the logs in {home / 'logs'}")
    say(
        f"stack up: Airflow http://127.0.0.1:{ports['airflow']}, MLflow http://127.0.0.1:{ports['mlflow']},"
        f" model server http://127.0.0.1:{ports['server']}"
    )
    return run, env


# -- the loop -------------------------------------------------------------------------------------


COLLECTING = {"running", "up_for_reschedule"}  # the rollout sensor waits for labelled traffic


def _wait_for_deploy(
    api: Airflow, known: set[str], timeout: float
) -> tuple[str | None, dict[str, Any] | None]:
    """The deploy run a registration started: until it finishes or its rollout is collecting traffic."""
    run_id = api.new_run("deploy", known, 120)
    if run_id is None:
        return None, None
    known.add(run_id)
    waiting = api.wait(
        "deploy",
        run_id,
        timeout,
        until=lambda t: t.get("analyse_rollout") in COLLECTING,
    )
    return run_id, waiting


def exit_on_sigterm() -> None:
    """SIGTERM (a CI timeout, kill) exits through the ``finally`` that stops the stack, so that the
    scheduler's workers are not orphaned; a second SIGTERM while that runs is ignored, or it would
    cut the stopping short and leave Airflow running (as ``pkill`` twice once did)."""

    def terminate(*_: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sys.exit(143)

    signal.signal(signal.SIGTERM, terminate)


def run_loop(args: argparse.Namespace) -> int:
    home = Path(args.home or os.environ.get("MLOPS_HOME") or stack.ROOT / ".mlops").resolve()
    if args.fresh and home.exists():
        strangers = {p.name for p in home.iterdir()} - KNOWN_ENTRIES
        if not (home / MARKER).exists() and strangers:
            found = sorted(strangers)[:5]
            raise SystemExit(f"{home} holds files this project did not make ({found}); not wiping it")
        shutil.rmtree(home)
    home.mkdir(parents=True, exist_ok=True)
    (home / MARKER).write_text("made by mlops_airflow; `make demo` may wipe this folder\n")
    from pipelines.settings import DEFAULT_CONFIG

    os.environ["MLOPS_HOME"] = str(home)
    if os.environ.pop("MLOPS_CONFIG_DIR", None):  # the loop drives one model's DAGs, by their plain ids
        print("the loop replays one model: MLOPS_CONFIG_DIR is ignored (MLOPS_CONFIG=one.yaml picks it)")
    # --config, or the MLOPS_CONFIG a user set (`MLOPS_CONFIG=my.yaml make demo`), or the flights
    given = args.config or os.environ.get("MLOPS_CONFIG") or DEFAULT_CONFIG
    os.environ["MLOPS_CONFIG"] = str(loop_config(home, Path(given), args.swing_band))
    ports = {"airflow": args.airflow_port, "mlflow": args.mlflow_port, "server": args.serving_port}
    exit_on_sigterm()
    run, env = start_stack(home, ports)
    try:
        return _loop(args, home, env, ports)
    finally:
        if args.keep_up:
            pids = {name: proc.pid for name, proc in run.procs.items()}
            (home / "run").mkdir(exist_ok=True)
            for name, pid in pids.items():
                (home / "run" / f"{name}.pid").write_text(str(pid))
            say("the stack keeps running (make down stops it)")
        else:
            run.stop()


def _loop(args: argparse.Namespace, home: Path, env: dict[str, str], ports: dict[str, int]) -> int:

    from pipelines.config import load_config
    from pipelines.settings import Settings

    os.environ.update(env)
    settings = Settings.from_env()
    config = load_config(settings.config_path)
    api = Airflow(ports["airflow"], auto_approve=not args.no_auto_approve)
    url = f"http://127.0.0.1:{ports['server']}"
    known = {dag: {r["dag_run_id"] for r in api.runs(dag)} for dag in DAGS}
    failures = []

    # the months: as given, or from the config's span (its first three months train the first champion)
    train_last, first, last = util.replay_months(
        config.schedule.start_date, config.schedule.end_date,
        train_last=args.train_last, first=args.first, last=args.last,
    )  # fmt: skip
    first_end = util.next_month(train_last)
    say(
        f"1. training the first champion on up to {config.ingest.window_months} months before {first_end} ..."
    )
    run_id = api.trigger("training", {"interval_end": first_end})
    known["training"].add(run_id)
    trained = api.wait("training", run_id, 900)
    if trained["state"] != "success":
        say(f"the first training run ended {trained['state']}: see the Airflow UI")
        return 1
    deploy_id, _ = _wait_for_deploy(api, known["deploy"], 600)
    if deploy_id:
        api.wait("deploy", deploy_id, 600)
    if not processes.wait_http(f"{url}/ready", 120):
        say("the model server has no champion: see logs/server.log")
        return 1
    baseline = _baseline_model(settings, config)
    table = []
    months = util.months(first, last)
    for i, month in enumerate(months, 1):
        say(f"2.{i} {month}: replaying the month as traffic ...")
        raw, x, label = month_rows(config, month)
        served = replay(url, raw, x, label, config, args.concurrency)
        posted = post_feedback(url, served)
        say(f"  posted {posted} outcomes as feedback")
        champion_rows = served[served["route"] == "champion"]
        row: dict[str, Any] = {
            "month": month,
            "rows": len(served),
            "serving": ", ".join(
                f"v{v}: {n}" for v, n in served["model_version"].value_counts().sort_index().items()
            ),
            "live_auc": score_auc(champion_rows["label"], champion_rows["probability"]),
            "unanswered": len(x) - len(served),
            "retried_503": served.attrs["retried_503"],
            "never_retrain_auc": score_auc(label, baseline.predict_proba(x)[:, 1]),
        }
        # A rollout that this month's traffic completed decides now; then monitoring reads a settled champion.
        for deploy_id in [r["dag_run_id"] for r in api.runs("deploy") if r["state"] in ("running", "queued")]:
            say("  a rollout is collecting traffic: waiting for its verdict ...")
            done = api.wait("deploy", deploy_id, args.rollout_wait)
            verdict = api.result("deploy", deploy_id, "conclude_rollout") or {}
            row["verdict"] = f"{verdict.get('decision', done['state'])} v{verdict.get('version', '?')}"
        say(f"  monitoring {month} (the monitoring DAG, through the scheduler) ...")
        monitor_id = api.trigger("monitoring", {"interval_end": util.next_month(month)})
        known["monitoring"].add(monitor_id)
        monitored = api.wait("monitoring", monitor_id, 600)
        found = api.result("monitoring", monitor_id, "detect_drift") or {}
        drift, perf = found.get("drift") or {}, found.get("performance") or {}
        row.update(
            {
                "drift_share": drift.get("share"),
                "weighted_drift": drift.get("weighted_share"),
                "drifted": ", ".join(drift.get("drifted_features") or []),
                "monitored_auc": perf.get("live"),
                "estimated_auc": (found.get("estimated") or {}).get("roc_auc"),
                "reasons": "; ".join(found.get("explanation") or []),
                "retrain": "no",
            }
        )
        if monitored["state"] != "success":
            failures.append(f"monitoring {month}: {monitored['state']}")
        if monitored["tasks"].get("decide_retrain") == "success":
            row["retrain"] = "yes"
            say("  drift or decay: the retrain Asset event went out; waiting for the training it starts ...")
            training_id = api.new_run("training", known["training"], 120)
            if training_id is None:
                failures.append(f"{month}: no training run followed the retrain event")
                row["retrain"] = "yes (no run!)"
            else:
                known["training"].add(training_id)
                trained = api.wait("training", training_id, 900)
                registered = api.result("training", training_id, "register") or {}
                if trained["tasks"].get("register") == "success":
                    row["new_version"] = f"v{registered.get('version')}"
                    deploy_id, state = _wait_for_deploy(api, known["deploy"], 600)
                    tasks = (state or {}).get("tasks", {})
                    if tasks.get("analyse_rollout") in COLLECTING:
                        row["rollout"] = f"{config.deploy.rollout.strategy} started"
                    elif state:
                        row["rollout"] = f"deploy {state['state']}"
                else:
                    evaluation = api.result("training", training_id, "evaluate") or {}
                    row["new_version"] = "rejected" if trained["state"] == "success" else trained["state"]
                    row["gate"] = evaluation.get("reason", "")
        else:
            row["retrain_reason"] = monitored["tasks"].get("decide_retrain")
        table.append(row)
        say(f"  {month}: {row_text(row)}")
        say(f"  policy: {row['reasons'] or 'no report'}")
    _add_monthly_cron(config, table, first, last)
    write_results(home, settings, config, table, api.approvals)
    for failure in failures:
        say(f"problem: {failure}")
    return 1 if failures else 0


def _add_monthly_cron(config, table: list[dict[str, Any]], first: str, last: str) -> None:
    """What a monthly cron would have served each month: the policy backtest, in process, on the
    same months, with the same training, gate and rollout (it takes a minute)."""
    from pipelines import backtest

    say("3. the monthly cron on the same months (pipelines.backtest, in process) ...")
    replay = backtest.Replay(config, first=first, last=last)
    policy = next(p for p in backtest.standard_policies(config) if p.name == "monthly")
    oracle = [float("nan")] * len(replay.periods)
    cron = backtest.simulate(replay, policy, backtest.configured_strategy(config), oracle)
    for row, month in zip(table, cron.months, strict=True):
        row["monthly_cron_auc"] = month["live_auc"]


def _baseline_model(settings, config):
    """The first champion, kept fixed: the "never retrain" baseline."""
    from pipelines import model_format, tracking

    version = tracking.champion_version(settings, config.registry.model_name)
    return model_format.load_uri(settings, f"models:/{config.registry.model_name}/{version.version}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlops_demo.loop", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--train-last",
        help="the first champion trains up to this month (default: before --first, else the span's third)",
    )
    parser.add_argument(
        "--first", help="first month to replay (YYYY-MM; default: the one after --train-last)"
    )
    parser.add_argument("--last", help="last month to replay (default: the last full month of the span)")
    parser.add_argument("--home", help="MLOPS_HOME of the loop's stores (default .mlops)")
    parser.add_argument("--config", help="pipeline config (default: the bundled flights dataset)")
    parser.add_argument("--fresh", action="store_true", help="start from empty stores (wipes MLOPS_HOME)")
    parser.add_argument("--keep-up", action="store_true", help="leave the stack running at the end")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight while replaying")
    parser.add_argument(
        "--rollout-wait", type=float, default=90,
        help="seconds to wait for a rollout's verdict once the month's traffic is in; a sample that"
        " needs more traffic goes on collecting it next month",
    )  # fmt: skip
    parser.add_argument(
        "--swing-band", type=float, default=None, help="override gate.swing_band (wider swings need approval)"
    )
    parser.add_argument(
        "--no-auto-approve", action="store_true",
        help="leave rollouts that need approval to you in the Airflow UI (the replay waits)",
    )  # fmt: skip
    parser.add_argument("--airflow-port", type=int, default=stack.AIRFLOW_PORT)
    parser.add_argument("--mlflow-port", type=int, default=stack.MLFLOW_PORT)
    parser.add_argument("--serving-port", type=int, default=stack.SERVING_PORT)
    return run_loop(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
