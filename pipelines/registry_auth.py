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


def ensure_users(url: str, env: dict[str, str], *, wait_seconds: float = 0) -> None:
    """Create the ``pipeline`` and ``server`` users as the admin, or set their passwords to the
    current secrets (a rotated secret takes effect on the next start); idempotent.

    ``wait_seconds``: keep trying that long while the server is not up yet (a Kubernetes Job
    that starts with the release)."""
    if not enabled(env):
        return
    import time

    import httpx

    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            _ensure_users(url, env)
            return
        except httpx.TransportError as exc:
            if time.monotonic() >= deadline:
                raise SystemExit(f"MLflow at {url} is not reachable: {exc}") from None
            time.sleep(2)


def _ensure_users(url: str, env: dict[str, str]) -> None:
    import httpx

    with httpx.Client(
        base_url=f"{url}/api/2.0/mlflow", auth=(ADMIN, env["MLFLOW_AUTH_ADMIN_PASSWORD"]), timeout=30
    ) as api:
        for role, password_env in ROLES.items():
            password = env[password_env]
            if api.get("/users/get", params={"username": role}).status_code == 200:
                answer = api.patch("/users/update-password", json={"username": role, "password": password})
                action = "updating the password of"
            else:
                answer = api.post("/users/create", json={"username": role, "password": password})
                action = "creating"
            if answer.status_code != 200:
                status = f"HTTP {answer.status_code} {answer.text}"
                raise SystemExit(f"{action} MLflow user {role!r} failed: {status}")


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.registry_auth ensure-users --url URL``: the chart's bootstrap Job."""
    import argparse
    import os

    parser = argparse.ArgumentParser(prog="python -m pipelines.registry_auth", description=__doc__)
    parser.add_argument("command", choices=["ensure-users"])
    parser.add_argument("--url", required=True, help="the MLflow server, e.g. http://mlops-mlflow:5000")
    parser.add_argument("--wait", type=float, default=300, help="seconds to wait for the server")
    args = parser.parse_args(argv)
    env = dict(os.environ)
    missing = [name for name in SECRETS if name != "MLFLOW_FLASK_SERVER_SECRET_KEY" and not env.get(name)]
    if missing:
        raise SystemExit(f"ensure-users needs these secrets in the environment: {', '.join(missing)}")
    ensure_users(args.url, {**env, AUTH_ENV: "basic"}, wait_seconds=args.wait)
    print(f"MLflow users {', '.join(ROLES)} are in place at {args.url}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
