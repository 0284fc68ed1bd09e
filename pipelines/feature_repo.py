"""The Feast repo, configured in code: where the stores live and what the feature views are.

From a dataset config's ``feature_store`` section (see :class:`pipelines.config.FeatureView`) and
the environment this module makes what ``feature_store.yaml`` and ``feast apply`` would: the
:class:`Location` of the stores, the ``RepoConfig`` behind :func:`open_store`, and the Feast
entities, sources and views (:func:`definitions`). :mod:`pipelines.feature_store` builds the
tables they read, joins them for training and looks them up for serving.

Where the stores live is configuration (environment), never code:

| variable | embedded default | production |
|---|---|---|
| ``MLOPS_FEATURE_OFFLINE`` | Parquet under ``{artifact_root}/feature_store/`` | ``postgresql://...`` |
| ``MLOPS_FEATURE_ONLINE`` | SQLite ``{artifact_root}/feature_store/online.db`` | ``redis://host:6379/0`` |
| ``MLOPS_FEATURE_REGISTRY`` | ``{artifact_root}/feature_store/registry.db`` | ``postgresql://...`` |
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import unquote, urlparse

from pipelines import storage
from pipelines.config import Dataset, FeatureStoreConfig, FeatureView
from pipelines.errors import ConfigError
from pipelines.settings import Settings

EVENT_TIMESTAMP = "event_timestamp"
_PROMETHEUS_VARIABLES = ("PROMETHEUS_MULTIPROCESS_DIR", "PROMETHEUS_MULTIPROC_DIR")


def _import_feast():
    """Import Feast without letting it switch this process's Prometheus client to multiprocess mode.

    ``import feast`` sets ``PROMETHEUS_MULTIPROC_DIR`` for its own server; the model server's
    metrics (and every child process) must keep the ordinary registry.
    """
    saved = {name: os.environ.get(name) for name in _PROMETHEUS_VARIABLES}
    import feast

    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    return feast


@dataclass(frozen=True)
class Location:
    """Where the offline store, the online store and the registry live."""

    offline: str  # a folder (Parquet files) or a postgresql:// URL
    online: str  # a SQLite path or a redis:// URL
    registry: str  # a file path or a postgresql:// URL

    @classmethod
    def from_env(cls, settings: Settings) -> Location:
        """The locations the environment names, or the embedded defaults under the artifact root."""
        root = storage.join(settings.artifact_root, "feature_store")
        return cls(
            offline=os.environ.get("MLOPS_FEATURE_OFFLINE") or root,
            online=os.environ.get("MLOPS_FEATURE_ONLINE") or storage.join(root, "online.db"),
            registry=os.environ.get("MLOPS_FEATURE_REGISTRY") or storage.join(root, "registry.db"),
        )

    @property
    def offline_is_sql(self) -> bool:
        """Whether the offline store is PostgreSQL (else Parquet files)."""
        return self.offline.startswith("postgresql")


# Every call to the online store gives up after this long: a hung Redis is a 503, not a hung request.
REDIS_TIMEOUT_SECONDS = 5


def redis_connection_string(url: str) -> str:
    """Feast's Redis connection string from a ``redis://`` or ``rediss://`` URL, keeping what the URL
    says: user and password (``redis://:pw@host``), TLS (``rediss``), the database, and timeouts."""
    parsed = urlparse(url)
    db = (parsed.path or "/0").lstrip("/") or "0"
    if not db.isdigit():
        raise ConfigError(f"MLOPS_FEATURE_ONLINE: the Redis database must be a number, got {db!r}")
    parts = [
        f"{parsed.hostname or '127.0.0.1'}:{parsed.port or 6379}",
        f"db={db}",
        f"socket_timeout={REDIS_TIMEOUT_SECONDS}",
        f"socket_connect_timeout={REDIS_TIMEOUT_SECONDS}",
    ]
    for key, value in (("username", parsed.username), ("password", parsed.password)):
        if value:
            value = unquote(value)
            if "," in value or "=" in value:  # Feast splits its connection string on both
                raise ConfigError(f"MLOPS_FEATURE_ONLINE: the Redis {key} cannot contain ',' or '='")
            # Feast JSON-decodes each value (1.50 became 1.5, null no password): a JSON string
            # decodes to exactly the text
            parts.append(f"{key}={json.dumps(value)}")
    if parsed.scheme == "rediss":
        parts.append("ssl=true")
    return ",".join(parts)


def _pg(url: str) -> dict[str, Any]:
    parsed = urlparse(url)
    return {
        "host": parsed.hostname or "127.0.0.1",
        "port": parsed.port or 5432,
        "database": parsed.path.lstrip("/") or "postgres",
        "user": parsed.username or "postgres",
        "password": parsed.password or "",
        "sslmode": "disable" if parsed.hostname in {None, "127.0.0.1", "localhost"} else "require",
    }


def open_store(settings: Settings, store: FeatureStoreConfig) -> Any:
    """A Feast ``FeatureStore`` configured in code (no feature_store.yaml, no ``feast apply``)."""
    _import_feast()
    from feast import FeatureStore, RepoConfig
    from feast.repo_config import RegistryConfig

    where = Location.from_env(settings)
    if where.registry.startswith("postgresql"):
        from feast.infra.registry.sql import SqlRegistryConfig

        url = where.registry.replace("postgresql://", "postgresql+psycopg://", 1)
        registry: Any = SqlRegistryConfig(registry_type="sql", path=url, cache_ttl_seconds=60)
    else:
        _make_parent(where.registry)
        registry = RegistryConfig(registry_type="file", path=where.registry, cache_ttl_seconds=60)
    if where.offline_is_sql:
        from feast.infra.offline_stores.contrib.postgres_offline_store.postgres import (
            PostgreSQLOfflineStoreConfig,
        )

        offline: Any = PostgreSQLOfflineStoreConfig(**_pg(where.offline))
    else:
        # DuckDB over the Parquet files: Feast's default (Dask) engine joins every entity row with
        # every feature row of its key before filtering on time, which runs out of memory on a
        # year of hourly weather.
        from feast.infra.offline_stores.duckdb import DuckDBOfflineStoreConfig

        offline = DuckDBOfflineStoreConfig()
    if where.online.startswith(("redis://", "rediss://")):
        from feast.infra.online_stores.redis import RedisOnlineStoreConfig

        online: Any = RedisOnlineStoreConfig(connection_string=redis_connection_string(where.online))
    elif "://" in where.online:
        raise ConfigError(
            f"MLOPS_FEATURE_ONLINE {where.online.split('://')[0]}:// is not supported: use redis://,"
            " rediss:// (TLS) or a SQLite file path"
        )
    else:
        from feast.infra.online_stores.sqlite import SqliteOnlineStoreConfig

        _make_parent(where.online)
        online = SqliteOnlineStoreConfig(path=where.online)
    config = RepoConfig(
        project=store.project,
        provider="local",
        registry=registry,
        offline_store=offline,
        online_store=online,
        repo_path=str(settings.home),
        entity_key_serialization_version=3,
    )
    return FeatureStore(config=config)


def _make_parent(path: str) -> None:
    if "://" not in path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


def table_name(store: FeatureStoreConfig, view: FeatureView) -> str:
    """The SQL table of a view in a PostgreSQL offline store."""
    return f"fs_{store.project}_{view.name}"


def definitions(settings: Settings, dataset: Dataset) -> list[Any]:
    """Feast entities, sources and feature views for the dataset's ``feature_store`` section."""
    _import_feast()
    from feast import Entity, Field, FileSource, ValueType
    from feast import FeatureView as FeastView
    from feast.types import Float64, String

    store = store_config(dataset)
    where = Location.from_env(settings)
    objects: list[Any] = [
        Entity(name=name, join_keys=[name], value_type=ValueType.STRING) for name in store.entity_columns
    ]
    entities = {e.name: e for e in objects}
    for view in store.views:
        if where.offline_is_sql:
            from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import (
                PostgreSQLSource,
            )

            source: Any = PostgreSQLSource(
                name=f"{view.name}_source", table=table_name(store, view), timestamp_field=EVENT_TIMESTAMP
            )
        else:
            path = storage.join(where.offline, f"{view.name}.parquet")
            source = FileSource(name=f"{view.name}_source", path=path, timestamp_field=EVENT_TIMESTAMP)
        numeric = set(view.features) if view.kind == "rolling_rate" else set(dataset.features.numeric)
        schema = [Field(name=e, dtype=String) for e in view.entities]
        schema += [Field(name=f, dtype=Float64 if f in numeric else String) for f in view.features]
        objects += [
            source,
            FeastView(
                name=view.name,
                entities=[entities[e] for e in view.entities],
                ttl=timedelta(hours=view.ttl_hours),
                schema=schema,
                source=source,
                online=True,
            ),
        ]
    return objects


def store_config(dataset: Dataset) -> FeatureStoreConfig:
    """The dataset's ``feature_store`` section (a :class:`ConfigError` when it has none)."""
    if dataset.feature_store is None:
        raise ConfigError(f"dataset {dataset.name!r} has no feature_store section")
    return dataset.feature_store
