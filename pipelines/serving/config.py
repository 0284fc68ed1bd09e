"""Settings of the model server, from ``MLOPS_SERVING_*`` environment variables.

Environment variables (and not a file) because every replica of a Deployment
gets them the same way; the token may come from a file mounted from a Secret.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines import privacy
from pipelines.errors import ConfigError
from pipelines.serving import security
from pipelines.settings import Settings
from pipelines.util import env_bool


def _env_number(env: dict[str, str], name: str, default: float, kind=float, minimum: float = 0) -> Any:
    raw = env.get(name)
    if raw is None or raw == "":
        return kind(default)
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _request_keys(dataset: Any) -> tuple[str, ...]:
    """Fields a request may carry to be completed from the feature store: keys and entities."""
    if dataset.feature_store is None:
        return ()
    keys = [*dataset.key, dataset.time_column, *dataset.feature_store.entity_columns]
    return tuple(dict.fromkeys(keys))


@dataclass(frozen=True)
class ServingSettings:
    settings: Settings
    model_name: str
    pinned_version: str | None = None
    poll_seconds: float = 5.0
    # Bearer tokens by scope (pipelines.serving.security): none means auth is off.
    tokens: dict[str, str] = field(default_factory=dict, repr=False)
    # Signs request ids and salts the routing hash; the same on every replica.
    secret: bytes = field(default=b"", repr=False)
    max_rows: int = 10_000
    max_body_bytes: int = 8 * 1024 * 1024
    # Requests in the server at once (reading, waiting, scoring): beyond it a 503 with Retry-After.
    max_pending: int = 256
    # Memory, whatever clients send: the bodies held at once stay under max_buffered_bytes (503
    # beyond), and only parse_slots large bodies are parsed at a time, /predict and /feedback
    # alike (their Python objects take 10x to 24x the body: 2 x 24 x 8 MiB = 384 MiB at worst);
    # a body must arrive within body_timeout_seconds (408).
    max_buffered_bytes: int = 32 * 1024 * 1024
    parse_slots: int = 2
    body_timeout_seconds: float = 10.0
    # ...and its headers within this of the connection (or the request's first byte): serving/http.py
    header_timeout_seconds: float = 10.0
    # ...and a client must read its answers: a write buffer not drained within this drops it.
    send_timeout_seconds: float = 10.0
    # uvicorn's limit on open connections and tasks (a 503 beyond it, before any body is read).
    limit_concurrency: int = 1024
    # Bodies above this are parsed and checked in a worker thread, not on the event loop.
    parse_in_thread_bytes: int = 64 * 1024
    max_wait_ms: float = 2.0
    # A request whose scoring and logging take longer gets a 503 (the model thread or the log hung).
    request_timeout_seconds: float = 30.0
    max_batch_rows: int = 4096
    shadow_queue: int = 64
    fsync: bool = False
    log_predictions: bool = True
    model_cache: Path = Path(".")
    # Serve one downloaded model folder with no registry at all (the infra-validation sandbox,
    # which runs without credentials); needs ``pinned_version`` for the answers' version field.
    model_dir: Path | None = None
    threshold: float | None = None
    features: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
    # Personal-data fields the model takes (pseudonymised): hashed before scoring and logging.
    personal: tuple[str, ...] = ()
    # Fingerprint of this server's pseudonymisation key (with personal fields): a version trained
    # on pseudonyms of another key is refused, its answers would be noise.
    pii_fingerprint: str | None = None
    # The dataset when it declares a feature store: requests may then carry only the keys
    # (``request_keys``) and the server completes them with online features.
    store_dataset: Any = None
    request_keys: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ServingSettings:
        """Read the server's settings; the model name defaults to the pipeline config's."""
        from pipelines.config import load_config

        env = dict(os.environ if env is None else env)
        settings = Settings.from_env(env)
        config = load_config(settings.config_path)
        model_dir = Path(env["MLOPS_SERVING_MODEL_DIR"]) if env.get("MLOPS_SERVING_MODEL_DIR") else None
        body, buffered = (
            _env_number(env, "MLOPS_SERVING_MAX_BODY_BYTES", 8 * 1024 * 1024, int, 1),
            _env_number(env, "MLOPS_SERVING_MAX_BUFFERED_BYTES", 32 * 1024 * 1024, int, 1),
        )
        if buffered < body:
            raise ConfigError(
                f"MLOPS_SERVING_MAX_BUFFERED_BYTES ({buffered}) is below MLOPS_SERVING_MAX_BODY_BYTES"
                f" ({body}): no body of the largest allowed size could ever be read"
            )
        if model_dir is not None and not env.get("MLOPS_SERVING_VERSION"):
            raise ConfigError("MLOPS_SERVING_MODEL_DIR needs MLOPS_SERVING_VERSION (the version it holds)")
        return cls(
            settings=settings,
            model_name=env.get("MLOPS_SERVING_MODEL") or config.registry.model_name,
            pinned_version=env.get("MLOPS_SERVING_VERSION") or None,
            model_dir=model_dir,
            threshold=_env_number(env, "MLOPS_SERVING_THRESHOLD", 0.5) if model_dir else None,
            poll_seconds=_env_number(env, "MLOPS_SERVING_POLL_SECONDS", 5.0, minimum=0.1),
            tokens=security.tokens_from_env(env),
            secret=security.secret_from_env(env, settings.home),
            max_pending=_env_number(env, "MLOPS_SERVING_MAX_PENDING", 256, int, 1),
            max_buffered_bytes=buffered,
            parse_slots=_env_number(env, "MLOPS_SERVING_PARSE_SLOTS", 2, int, 1),
            body_timeout_seconds=_env_number(env, "MLOPS_SERVING_BODY_TIMEOUT_SECONDS", 10.0, minimum=0.1),
            header_timeout_seconds=_env_number(
                env, "MLOPS_SERVING_HEADER_TIMEOUT_SECONDS", 10.0, minimum=0.1
            ),
            send_timeout_seconds=_env_number(env, "MLOPS_SERVING_SEND_TIMEOUT_SECONDS", 10.0, minimum=0.1),
            limit_concurrency=_env_number(env, "MLOPS_SERVING_LIMIT_CONCURRENCY", 1024, int, 1),
            max_rows=_env_number(env, "MLOPS_SERVING_MAX_ROWS", 10_000, int, 1),
            max_body_bytes=body,
            max_wait_ms=_env_number(env, "MLOPS_SERVING_MAX_WAIT_MS", 2.0),
            request_timeout_seconds=_env_number(
                env, "MLOPS_SERVING_REQUEST_TIMEOUT_SECONDS", 30.0, minimum=0.001
            ),
            max_batch_rows=_env_number(env, "MLOPS_SERVING_MAX_BATCH_ROWS", 4096, int, 1),
            shadow_queue=_env_number(env, "MLOPS_SERVING_SHADOW_QUEUE", 64, int, 1),
            fsync=env_bool(env, "MLOPS_PREDICTION_LOG_FSYNC", False),
            log_predictions=env_bool(env, "MLOPS_SERVING_LOG_PREDICTIONS", True),
            model_cache=Path(env.get("MLOPS_SERVING_MODEL_CACHE") or settings.home / "serving" / "models"),
            features=(tuple(config.dataset.features.numeric), tuple(config.dataset.features.categorical)),
            personal=tuple(config.dataset.personal_data.allowed_as_features),
            # with personal fields, a missing key outside the embedded profile stops the start here
            pii_fingerprint=(
                privacy.key_fingerprint(env) if config.dataset.personal_data.allowed_as_features else None
            ),
            store_dataset=config.dataset if config.dataset.feature_store else None,
            request_keys=_request_keys(config.dataset),
        )

    @classmethod
    def for_models(cls, env: dict[str, str] | None = None) -> tuple[list[ServingSettings], dict[str, str]]:
        """The settings of every model this server serves, and the catalogue's models it cannot.

        With a catalogue (``MLOPS_CONFIG_DIR``), every model whose config loads, each with its own
        config (features, feature store, personal data); ``MLOPS_SERVING_MODEL`` narrows it to one.
        Without, the one model of ``MLOPS_CONFIG``. The second value maps each model whose config
        does not load to why: the others are served, and a request for it gets a 404 saying why.
        """
        from pipelines.catalogue import load_catalogue, model_key

        env = dict(os.environ if env is None else env)
        if not env.get("MLOPS_CONFIG_DIR"):
            return [cls.from_env(env)], {}
        models = load_catalogue(Settings.from_env(env))
        if env.get("MLOPS_SERVING_MODEL"):
            wanted = model_key(env["MLOPS_SERVING_MODEL"])
            models = [m for m in models if m.key == wanted]
            if not models:
                name = env["MLOPS_SERVING_MODEL"]
                raise ConfigError(f"MLOPS_SERVING_MODEL {name!r} is not in the catalogue")
        good = [m for m in models if m.config is not None]
        if len(good) > 1 and (env.get("MLOPS_SERVING_VERSION") or env.get("MLOPS_SERVING_MODEL_DIR")):
            raise ConfigError(
                "a pinned version (--version, MLOPS_SERVING_VERSION) serves one model: name it with "
                "MLOPS_SERVING_MODEL"
            )
        broken = {m.name: m.error or "" for m in models if m.config is None}
        if not good:
            raise ConfigError("no model of the catalogue can be served: " + "; ".join(broken.values()))
        return [cls.from_env({**env, "MLOPS_CONFIG": str(m.path)}) for m in good], broken

    @property
    def auth(self) -> bool:
        """Whether requests need a bearer token."""
        return bool(self.tokens)

    def record_schema(self) -> dict[str, Any]:
        """JSON Schema of one input record, as the pipeline config declares the features."""
        numeric, categorical = self.features
        props: dict[str, Any] = {c: {"type": ["number", "null"]} for c in numeric}
        props |= {c: {"type": ["string", "null"]} for c in categorical}
        if self.store_dataset is not None:  # the keys suffice; the feature store fills the rest
            props |= {c: props.get(c, {"type": ["string", "number"]}) for c in self.request_keys}
            return {
                "type": "object",
                "properties": props,
                "required": list(self.store_dataset.key),
                "additionalProperties": False,
            }
        return {
            "type": "object",
            "properties": props,
            "required": [*numeric, *categorical],
            "additionalProperties": False,
        }
