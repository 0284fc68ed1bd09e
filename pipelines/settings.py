"""Where things live: the profile, read from the environment.

Switching from the embedded default to production is a matter of environment
variables, never code: point ``MLFLOW_TRACKING_URI`` at a server or a
PostgreSQL database and ``MLOPS_ARTIFACT_ROOT`` at ``s3://...``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).parent / "datasets" / "flights.yaml"


@dataclass(frozen=True)
class Settings:
    """Locations of the stores a step reads and writes."""

    home: Path
    artifact_root: str
    tracking_uri: str
    config_path: str
    # A folder of pipeline configs, one model each (``pipelines.catalogue``); empty: one model,
    # the config of ``config_path``.
    config_dir: str = ""
    # Where the model server logs predictions: empty = Parquet under the artifact root,
    # or a folder/URL for the Parquet parts, or a postgresql:// URL for a table.
    prediction_log_url: str = ""
    # Where a model server spools acknowledged predictions before compacting them into Parquet
    # parts: a folder that outlives the process (and the pod: the chart puts it on the shared
    # volume), shared by the servers of one machine so that one recovers another's after a crash.
    prediction_spool: str = ""
    # False: DAGs run only on Asset events and manual triggers, never on their cron schedules
    # (a replay of history drives them by hand; Airflow's own switch would stop asset runs too).
    time_schedules: bool = True

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Build settings from ``MLOPS_*`` / ``MLFLOW_TRACKING_URI`` variables with local defaults."""
        env = dict(os.environ if env is None else env)
        home = Path(env.get("MLOPS_HOME") or Path.cwd() / ".mlops").resolve()
        return cls(
            home=home,
            artifact_root=env.get("MLOPS_ARTIFACT_ROOT") or str(home / "artifacts"),
            tracking_uri=env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}",
            config_path=env.get("MLOPS_CONFIG") or str(DEFAULT_CONFIG),
            config_dir=env.get("MLOPS_CONFIG_DIR", ""),
            prediction_log_url=env.get("MLOPS_PREDICTION_LOG", ""),
            prediction_spool=env.get("MLOPS_PREDICTION_SPOOL", ""),
            time_schedules=env.get("MLOPS_TIME_SCHEDULES", "on").lower() not in {"off", "false", "0", "no"},
        )

    @property
    def tracking_is_database(self) -> bool:
        """True when MLflow is used without a server (the client writes the database itself)."""
        return self.tracking_uri.split(":", 1)[0] in {"sqlite", "postgresql", "mysql", "mssql"}
