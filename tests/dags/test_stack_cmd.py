"""The local stack's MLflow command line holds no secret."""

from __future__ import annotations

from pathlib import Path

from mlops_demo.stack import mlflow_server_cmd


def test_the_backend_uri_with_its_password_stays_off_the_command_line(tmp_path: Path):
    """Regression: --backend-store-uri put the database password into ps and /proc/*/cmdline."""
    uri = "postgresql+psycopg2://mlflow:db-secret-value@db:5432/mlflow"
    argv = mlflow_server_cmd(tmp_path, 5000, {"MLFLOW_BACKEND_STORE_URI": uri})
    assert "db-secret-value" not in " ".join(argv) and "--backend-store-uri" not in argv
    embedded = mlflow_server_cmd(tmp_path, 5000, {})  # no secret in a SQLite path: given outright
    assert embedded[embedded.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path / 'mlflow.db'}"


STOPPING = """
import sys, time
from pathlib import Path
from mlops_demo.loop import exit_on_sigterm
exit_on_sigterm()
try:
    print("ready", flush=True)
    time.sleep(60)
finally:
    print("stopping the stack", flush=True)
    time.sleep(2)
    Path(sys.argv[1]).write_text("stopped")
"""


def test_a_second_sigterm_does_not_cut_the_loops_cleanup_short(tmp_path: Path):
    import os
    import signal
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    marker = tmp_path / "stopped"
    proc = subprocess.Popen(
        [sys.executable, "-c", STOPPING, str(marker)], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )  # fmt: skip
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout.readline().strip() == "stopping the stack"
    proc.send_signal(signal.SIGTERM)  # kill, then kill again: the stack must still be stopped
    assert proc.wait(30) == 143
    assert marker.read_text() == "stopped"


def test_make_up_unpauses_each_catalogue_models_dags_and_only_those():
    import re

    from mlops_demo.stack import unpause_pattern

    pattern = re.compile(unpause_pattern(("training", "deploy")))
    for dag_id in ("training", "deploy", "training__flights_delay", "deploy__car_loan"):
        assert pattern.match(dag_id), dag_id
    for dag_id in ("monitoring", "monitoring__car_loan", "training_x", "batch_inference__training"):
        assert not pattern.match(dag_id), dag_id


def test_a_second_make_up_refuses_while_the_first_stack_runs(tmp_path: Path):
    """Regression: a second ``make up`` over a running one overwrote its pid files, and ``make down``
    then left the first stack's processes running, holding the ports."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    home = tmp_path / "home"
    (home / "run").mkdir(parents=True)
    first = subprocess.Popen(["sleep", "60"], start_new_session=True)  # its own process group
    try:
        (home / "run" / "airflow.pid").write_text(str(first.pid))
        (home / "run" / "mlflow.pid").write_text("999999")  # a stack stopped since: not in the way
        env = {**os.environ, "MLOPS_HOME": str(home), "PYTHONPATH": str(root)}
        done = subprocess.run(
            [sys.executable, "-m", "mlops_demo.stack", "up"], env=env, capture_output=True, text=True,
            timeout=120, cwd=root,
        )  # fmt: skip
        assert done.returncode == 1, done.stderr
        assert f"already up: airflow (process group {first.pid})" in done.stderr
        assert "mlflow" not in done.stderr.split("already up:")[1]
        assert (home / "run" / "airflow.pid").read_text() == str(first.pid)  # left for `make down`
        assert not (home / "logs").exists() and not (home / "mlflow.db").exists()  # nothing started
        assert first.poll() is None
    finally:
        first.kill()
        first.wait()
