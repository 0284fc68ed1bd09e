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
