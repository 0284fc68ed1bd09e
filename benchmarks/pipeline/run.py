"""Benchmark: the training DAG through Airflow vs. the same steps one after another in plain Python.

Same data (bundled flights, window Jan-Mar 2013), same config, same machine,
in one run. Each measurement is a fresh process with a fresh store that runs
the pipeline twice:

- *cold*: the first run of the process, imports and one-time set-up included
  (what ``airflow dags test`` or a fresh worker pays);
- *warm*: the second run in the same process (what orchestration costs per run
  once the libraries are loaded).

Plain and Airflow alternate, ``--repeat`` times each; medians and ratios are
written to ``benchmarks/README.md`` between the ``pipeline`` markers.

    .venv/bin/python benchmarks/pipeline/run.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
README = ROOT / "benchmarks" / "README.md"
BEGIN, END = "<!-- pipeline:begin -->", "<!-- pipeline:end -->"
INTERVAL_END = "2013-04-01"  # window Jan-Mar 2013


def child_plain() -> dict[str, float]:
    from pipelines.context import StepContext
    from pipelines.pipeline import TRAINING
    from pipelines.runner import run_pipeline

    times = []
    for i in range(2):
        started = time.perf_counter()
        ctx = StepContext.create(
            dag_id="training", run_id=f"plain-{i}", interval_start="2013-03-01", interval_end=INTERVAL_END
        )
        results = run_pipeline(TRAINING, ctx)
        assert results["evaluate"]["metrics"]["roc_auc"] > 0.6
        times.append(time.perf_counter() - started)
    return {"first_run": times[0], "second_run": times[1]}


def child_airflow() -> dict[str, float]:
    import pendulum
    from airflow.dag_processing.dagbag import DagBag

    times = []
    for _ in range(2):
        started = time.perf_counter()
        dag = DagBag(dag_folder=str(ROOT / "dags")).dags["training"]
        run = dag.test(logical_date=pendulum.parse(INTERVAL_END, tz=dag.timezone))
        assert str(run.state) == "success", run.state
        times.append(time.perf_counter() - started)
    return {"first_run": times[0], "second_run": times[1]}


def measure(mode: str) -> dict[str, float]:
    """One fresh process with a fresh store; returns process wall time and per-run times."""
    from mlops_demo.stack import stack_env

    home = Path(tempfile.mkdtemp(prefix=f"bench-{mode}-"))
    env = {**os.environ, **stack_env(home, ROOT), "AIRFLOW__LOGGING__LOGGING_LEVEL": "ERROR"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLOPS_CONFIG", None)
    setup = 0.0
    if mode == "airflow":
        started = time.perf_counter()
        subprocess.run(["airflow", "db", "migrate"], env=env, check=True, capture_output=True)
        setup = time.perf_counter() - started
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode], env=env, check=True, capture_output=True, text=True
    )
    wall = time.perf_counter() - started
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {"process": wall, "setup": setup, **result}


def _median(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def report(plain: list[dict], airflow: list[dict]) -> str:
    def row(label: str, key: str) -> str:
        p, a = _median(plain, key), _median(airflow, key)
        return f"| {label} | {p:.1f} s | {a:.1f} s | {a / p:.2f} | {100 * (a - p) / p:+.0f}% |"

    setup = _median(airflow, "setup")
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            BEGIN,
            f"Measured {when} on {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"median of {len(plain)} alternating repetitions, by `make bench`.",
            "",
            "| what | plain Python | Airflow (`dag.test`) | ratio | Airflow overhead |",
            "|---|---|---|---|---|",
            row("first run in a fresh process (ML imports, new stores)", "first_run"),
            row("a further run in the same process", "second_run"),
            row("whole process, both runs (interpreter and all imports)", "process"),
            "",
            f"Not counted above: `airflow db migrate` on a fresh metadata database, {setup:.1f} s,"
            " once per install.",
            BEGIN.replace("begin", "raw") + " " + json.dumps({"plain": plain, "airflow": airflow}) + " -->",
            END,
        ]
    )


def write_readme(section: str) -> None:
    text = README.read_text() if README.exists() else "# Benchmarks\n"
    if BEGIN in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    README.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", choices=["plain", "airflow"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = child_plain() if args.child == "plain" else child_airflow()
        print(json.dumps(result))
        return 0
    plain, airflow = [], []
    for i in range(args.repeat):
        for mode, rows in (("plain", plain), ("airflow", airflow)):
            rows.append(measure(mode))
            r = rows[-1]
            print(
                f"[{i + 1}/{args.repeat}] {mode:8s} first run {r['first_run']:.1f} s, "
                f"second run {r['second_run']:.1f} s, process {r['process']:.1f} s",
                flush=True,
            )
    section = report(plain, airflow)
    write_readme(section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
