"""MLflow behind its basic-auth app: the pipeline writes as ``pipeline``, model servers read as ``server``.

On with ``MLOPS_MLFLOW_AUTH=basic`` (``profiles/production.env`` sets it). The tracking server
then answers 401 without credentials. Every authenticated user may read (``default_permission
= READ``). Whoever creates an experiment or a registered model manages it, and the pipeline
creates them all. So a model server's credentials read the registry, and writing a version or
moving ``champion`` takes the pipeline's. The admin's password reaches only the MLflow server
and this bootstrap, never a task or a model server.

Secrets, each from the environment (no default exists): ``MLFLOW_AUTH_ADMIN_PASSWORD``,
``MLOPS_MLFLOW_PIPELINE_PASSWORD``, ``MLOPS_MLFLOW_SERVER_PASSWORD`` and
``MLFLOW_FLASK_SERVER_SECRET_KEY`` (MLflow's CSRF key). The users' table lives in
``MLFLOW_AUTH_DB`` (default: a SQLite file in the stack's home).
"""

from __future__ import annotations

from pathlib import Path

AUTH_ENV = "MLOPS_MLFLOW_AUTH"
ADMIN = "admin"
ROLES = {"pipeline": "MLOPS_MLFLOW_PIPELINE_PASSWORD", "server": "MLOPS_MLFLOW_SERVER_PASSWORD"}
SECRETS = ("MLFLOW_AUTH_ADMIN_PASSWORD", *ROLES.values(), "MLFLOW_FLASK_SERVER_SECRET_KEY")


def enabled(env: dict[str, str]) -> bool:
    value = env.get(AUTH_ENV, "")
    if value not in ("", "off", "basic"):
        raise SystemExit(f"{AUTH_ENV}={value!r}: choose basic or off")
    return value == "basic"


def server_args(env: dict[str, str]) -> list[str]:
    """``mlflow server`` options: the basic-auth app when auth is on."""
    return ["--app-name", "basic-auth"] if enabled(env) else []


def server_env(home: Path, env: dict[str, str]) -> dict[str, str]:
    """The MLflow server's environment: its auth config written, every secret present."""
    if not enabled(env):
        return {k: v for k, v in env.items() if k not in SECRETS}
    missing = [name for name in SECRETS if not env.get(name)]
    if missing:
        raise SystemExit(f"{AUTH_ENV}=basic needs these secrets in the environment: {', '.join(missing)}")
    config = Path(home) / "mlflow-auth.ini"
    config.parent.mkdir(parents=True, exist_ok=True)
    database = env.get("MLFLOW_AUTH_DB") or f"sqlite:///{Path(home).resolve() / 'mlflow-auth.db'}"
    config.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {database}\n"
        f"admin_username = {ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    config.chmod(0o600)
    return {
        **{k: v for k, v in env.items() if k not in ROLES.values()},
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
    }


def as_role(env: dict[str, str], role: str) -> dict[str, str]:
    """``env`` for a process acting as ``role`` (pipeline or server): its credentials, no other secret."""
    out = {k: v for k, v in env.items() if k not in SECRETS}
    if enabled(env):
        out |= {"MLFLOW_TRACKING_USERNAME": role, "MLFLOW_TRACKING_PASSWORD": env[ROLES[role]]}
    return out


def ensure_users(url: str, env: dict[str, str]) -> None:
    """Create the ``pipeline`` and ``server`` users on a fresh auth store (idempotent), as the admin."""
    if not enabled(env):
        return
    import httpx

    with httpx.Client(
        base_url=f"{url}/api/2.0/mlflow", auth=(ADMIN, env["MLFLOW_AUTH_ADMIN_PASSWORD"])
    ) as api:
        for role, password_env in ROLES.items():
            if api.get("/users/get", params={"username": role}).status_code == 200:
                continue
            created = api.post("/users/create", json={"username": role, "password": env[password_env]})
            if created.status_code != 200:
                raise SystemExit(
                    f"creating MLflow user {role!r} failed: HTTP {created.status_code} {created.text}"
                )
