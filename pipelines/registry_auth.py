"""MLflow behind its basic-auth app: the pipeline writes as ``pipeline``, model servers read as ``server``.

On with ``MLOPS_MLFLOW_AUTH=basic`` (``profiles/production.env`` sets it). The tracking server
then answers 401 without credentials. Every authenticated user may read (``default_permission
= READ``). Whoever creates an experiment or a registered model manages it, and the pipeline
creates them all. So a model server's credentials read the registry, and writing a version or
moving ``champion`` takes the pipeline's. The admin's password reaches only the MLflow server
and this bootstrap, never a task or a model server.

MLflow lets any authenticated user create a registered model or an experiment, and makes the
creator its manager: a server's credentials could take a name before the pipeline's first run and
then move ``champion``. So the bootstrap claims the names the configuration uses (``claim``):
created as ``pipeline`` where missing, ``pipeline`` granted MANAGE, and any grant ``server`` holds
on them revoked (back to READ), with an error that names what it had taken.

Secrets, each from the environment (no default exists): ``MLFLOW_AUTH_ADMIN_PASSWORD``,
``MLOPS_MLFLOW_PIPELINE_PASSWORD``, ``MLOPS_MLFLOW_SERVER_PASSWORD`` and
``MLFLOW_FLASK_SERVER_SECRET_KEY`` (MLflow's CSRF key). The users' table lives in
``MLFLOW_AUTH_DB`` (default: a SQLite file in the stack's home).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

AUTH_ENV = "MLOPS_MLFLOW_AUTH"
ADMIN = "admin"
ROLES = {"pipeline": "MLOPS_MLFLOW_PIPELINE_PASSWORD", "server": "MLOPS_MLFLOW_SERVER_PASSWORD"}
SECRETS = ("MLFLOW_AUTH_ADMIN_PASSWORD", *ROLES.values(), "MLFLOW_FLASK_SERVER_SECRET_KEY")


def enabled(env: dict[str, str]) -> bool:
    value = env.get(AUTH_ENV, "")
    if value not in ("", "off", "basic"):
        raise SystemExit(f"{AUTH_ENV}={value!r}: choose basic or off")
    return value == "basic"


# MLflow checks a basic-auth password with scrypt on every request (0.1 s of CPU here, 0.5 s
# when the machine is busy); a training task makes about 100 requests. MLflow 3's credential
# cache skips the check for a (user, password) it verified in the last AUTH_CACHE_SECONDS: the
# production profile's training task went from 38 s to ~10 s. A password changed through the
# API takes effect at once on the worker that changed it (the local stack runs one worker); other
# workers of a multi-worker server may accept the old password until the TTL runs out.
AUTH_CACHE_SECONDS = 30


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
        # configparser reads '%' as interpolation: a percent-encoded password (p%40ss) stopped
        # MLflow at start-up with InterpolationSyntaxError. The chart escapes it the same way.
        f"database_uri = {database.replace('%', '%%')}\n"
        f"admin_username = {ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        f"auth_cache_ttl_seconds = {AUTH_CACHE_SECONDS}\n"
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


# MLflow 3.17 keeps a second permission family for prompts, chosen by this tag on the registered
# model: a name created with it was managed through the prompt family, whatever claim granted on
# the registered-model one.
PROMPT_TAG = "mlflow.prompt.is_prompt"


def claim(url: str, env: dict[str, str], names: list[tuple[str, str]]) -> None:
    """Make each ``(registered model, experiment)`` the pipeline's, and the experiment's
    ``-monitoring`` twin (``detect_drift`` logs there): created as ``pipeline`` where missing, MANAGE
    for ``pipeline``, no grant for ``server`` (which then reads, by the default).

    A name ``server`` had been granted more than READ on (it created it first) is repaired the
    same way, and a model created as a prompt is deleted and created again (see below); both are
    then reported as an error: what ``server`` did with them needs a person's look.
    """
    if not enabled(env):
        return
    import httpx

    admin_auth = (ADMIN, env["MLFLOW_AUTH_ADMIN_PASSWORD"])
    pipeline_auth = ("pipeline", env[ROLES["pipeline"]])
    api, grants = f"{url}/api/2.0/mlflow", f"{url}/api/3.0/mlflow/users/permissions"
    taken: list[str] = []
    with (
        httpx.Client(base_url=api, auth=admin_auth, timeout=30) as admin,
        httpx.Client(base_url=api, auth=pipeline_auth, timeout=30) as pipeline,
        httpx.Client(base_url=grants, auth=admin_auth, timeout=30) as grant,
    ):
        resources = []
        for model, experiment in names:
            for name in (experiment, f"{experiment}-monitoring"):
                found = admin.get("/experiments/get-by-name", params={"experiment_name": name})
                if found.status_code == 404:
                    found = pipeline.post("/experiments/create", json={"name": name})
                    experiment_id = _ok(found, name)["experiment_id"]
                else:
                    experiment_id = _ok(found, name)["experiment"]["experiment_id"]
                resources.append(("experiment", experiment_id, f"experiment {name!r}"))
            found = admin.get("/registered-models/get", params={"name": model})
            if found.status_code != 404 and _is_prompt(_ok(found, model)["registered_model"]):
                # The pipeline never makes prompts, and could not have written to this one (its
                # grants are in the registered-model family): whoever made it holds it through the
                # prompt family, which the permission API cannot revoke. Deleting the name sweeps
                # both families' grants; it is then created again as the pipeline's.
                _ok(admin.request("DELETE", "/registered-models/delete", json={"name": model}), model)
                taken.append(f"registered model {model!r} (created as a prompt: deleted, then created again)")
                found = admin.get("/registered-models/get", params={"name": model})
            if found.status_code == 404:
                _ok(pipeline.post("/registered-models/create", json={"name": model}), model)
            resources.append(("registered_model", model, f"registered model {model!r}"))
        for kind, key, shown in resources:
            resource = {"resource_type": kind, "resource_id": key}
            has = _ok(grant.get("/get", params={"username": "pipeline", **resource}), shown)["permission"]
            if has != "MANAGE":  # a grant is not updated in place: a lower one goes first (none: 404)
                grant.post("/revoke", json={"username": "pipeline", **resource})
                manage = {"username": "pipeline", **resource, "permission": "MANAGE"}
                _ok(grant.post("/grant", json=manage), shown)
            held = _ok(grant.get("/get", params={"username": "server", **resource}), shown)["permission"]
            if held not in ("READ", "NO_PERMISSIONS"):
                _ok(grant.post("/revoke", json={"username": "server", **resource}), shown)
                taken.append(f"{shown} ({held})")
    if taken:
        raise SystemExit(
            "the model servers' MLflow user 'server' had taken " + ", ".join(taken) + ": the pipeline now "
            "manages them and 'server' only reads; check their versions, aliases and tags before serving"
        )


def _is_prompt(registered_model: dict[str, Any]) -> bool:
    return any(tag.get("key") == PROMPT_TAG for tag in registered_model.get("tags", []))


def _ok(answer: Any, what: str) -> dict[str, Any]:
    if answer.status_code != 200:
        raise SystemExit(
            f"claiming {what} for the pipeline failed: HTTP {answer.status_code} {answer.text[:300]}"
        )
    return answer.json()


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.registry_auth ensure-users --url URL``: the chart's bootstrap Job."""
    import argparse
    import os

    parser = argparse.ArgumentParser(prog="python -m pipelines.registry_auth", description=__doc__)
    parser.add_argument("command", choices=["ensure-users"])
    parser.add_argument("--url", required=True, help="the MLflow server, e.g. http://mlops-mlflow:5000")
    parser.add_argument("--wait", type=float, default=300, help="seconds to wait for the server")
    parser.add_argument(
        "--model", action="append", default=[], metavar="NAME",
        help="a registered model to claim for the pipeline besides the configuration's (repeatable)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    env = dict(os.environ)
    missing = [name for name in SECRETS if name != "MLFLOW_FLASK_SERVER_SECRET_KEY" and not env.get(name)]
    if missing:
        raise SystemExit(f"ensure-users needs these secrets in the environment: {', '.join(missing)}")
    env[AUTH_ENV] = "basic"
    ensure_users(args.url, env, wait_seconds=args.wait)
    print(f"MLflow users {', '.join(ROLES)} are in place at {args.url}")
    names = configured_names(env, args.model)
    claim(args.url, env, names)
    print("claimed for the pipeline: " + ", ".join(f"model {m!r} (experiment {e!r})" for m, e in names))
    return 0


def configured_names(env: dict[str, str], models: Sequence[str] = ()) -> list[tuple[str, str]]:
    """The configuration's ``(registry.model_name, registry.experiment)`` (``MLOPS_CONFIG``, else the
    shipped default), and each of ``models`` with that same experiment."""
    from pipelines.config import load_config
    from pipelines.settings import DEFAULT_CONFIG

    registry = load_config(env.get("MLOPS_CONFIG") or DEFAULT_CONFIG).registry
    names = [(registry.model_name, registry.experiment)]
    return names + [(model, registry.experiment) for model in models if model != registry.model_name]


if __name__ == "__main__":
    raise SystemExit(main())
