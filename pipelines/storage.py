"""The artifact store: run-scoped paths, atomic writes and content hashes, through fsspec.

Layout: ``{artifact_root}/{dag_id}/{run_id}/{step}/``. The same code reads and
writes a local folder or ``s3://``; a reader never sees a half-written file
(local files are written to a temporary name and renamed; object stores make
each PUT atomic already).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

import fsspec
import pandas as pd

_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]+")


def safe_segment(value: str) -> str:
    """A path segment from an Airflow id (``scheduled__2013-01-01T05:00:00+00:00`` has ':' and '+').

    A safe id stays as it is. Any other gets its characters replaced and a hash of the original
    appended, so two ids never share a folder (``a:b`` and ``a+b`` did) and no id climbs out of
    its parent (``..``)."""
    if _UNSAFE.search(value) is None and value.strip(".") and not value.startswith("."):
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:10]
    return f"{_UNSAFE.sub('_', value).strip('_.')}-{digest}".lstrip("-")


def join(root: str, *parts: str) -> str:
    """Join URI parts with '/', keeping the root's scheme."""
    return "/".join([root.rstrip("/"), *(p.strip("/") for p in parts)])


def step_dir(artifact_root: str, dag_id: str, run_id: str, step: str) -> str:
    """The folder a step of one DAG run owns."""
    return join(artifact_root, safe_segment(dag_id), safe_segment(run_id), step)


def resolve(uri: str) -> str:
    """Map ``package://<package>/<path>`` to the file shipped inside an installed package."""
    if not uri.startswith("package://"):
        return uri
    package, _, rel = uri.removeprefix("package://").partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.origin:
        raise FileNotFoundError(f"package {package!r} is not installed (needed for {uri})")
    return str(Path(spec.origin).parent / rel)


def options(uri: str) -> dict[str, Any]:
    """fsspec options for ``uri``: the S3 endpoint from ``AWS_ENDPOINT_URL``, when set.

    Passing it explicitly also makes it part of fsspec's instance cache key, so a process that
    talks to two endpoints in turn (tests, a worker whose profile changed) never reuses a
    filesystem bound to the other one.
    """
    if uri.startswith(("s3://", "s3a://")) and os.environ.get("AWS_ENDPOINT_URL"):
        return {"endpoint_url": os.environ["AWS_ENDPOINT_URL"]}
    return {}


def _fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(uri, **options(uri))
    return fs, path


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def write_bytes(uri: str, data: bytes) -> str:
    """Write ``data`` to ``uri`` atomically; return the URI."""
    fs, path = _fs(uri)
    parent = path.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    if _is_local(fs):
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    else:
        with fs.open(path, "wb") as fh:
            fh.write(data)
    return uri


def write_text(uri: str, text: str) -> str:
    return write_bytes(uri, text.encode("utf-8"))


def write_json(uri: str, obj: Any) -> str:
    return write_text(uri, json.dumps(obj, indent=2, sort_keys=True, default=str))


def write_parquet(uri: str, frame: pd.DataFrame) -> str:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return write_bytes(uri, buf.getvalue())


def read_bytes(uri: str) -> bytes:
    with fsspec.open(resolve(uri), "rb", **options(uri)) as fh:
        return fh.read()


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def read_parquet(uri: str) -> pd.DataFrame:
    with fsspec.open(resolve(uri), "rb", **options(uri)) as fh:
        return pd.read_parquet(fh)


def exists(uri: str) -> bool:
    fs, path = _fs(resolve(uri))
    return fs.exists(path)


def local_path(uri: str) -> str | None:
    """The local filesystem path behind ``uri``, or None for a remote store."""
    fs, path = _fs(resolve(uri))
    return path if _is_local(fs) else None


def frame_hash(frame: pd.DataFrame) -> str:
    """Content hash of a table: column names, dtypes and every value, independent of file format.

    Hashing values (not Parquet bytes) keeps the data version stable across
    pyarrow versions and compression settings.
    """
    digest = hashlib.sha256()
    digest.update(json.dumps([(c, str(t)) for c, t in frame.dtypes.items()]).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def sql_url(url: str) -> str:
    """A database URL with the installed driver: plain ``postgresql://`` means psycopg2.

    SQLAlchemy 2.1 maps ``postgresql://`` to psycopg 3, which this stack does not install; the
    documented ``postgresql://user@host/db`` form must keep working.
    """
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


# Seconds to wait for a database connection: an unreachable host fails fast, with its name.
SQL_CONNECT_TIMEOUT = 10


def sql_engine(url: str, *, statement_timeout_seconds: float | None = None, **options: Any):
    """A SQLAlchemy engine for ``url`` (``sql_url``) with deadlines: PostgreSQL gets a connect
    timeout and, when given, a statement timeout, so a hung database fails the caller instead of
    holding it for ever."""
    import sqlalchemy as sa

    url = sql_url(url)
    if url.startswith("postgresql"):
        connect_args: dict[str, Any] = {"connect_timeout": SQL_CONNECT_TIMEOUT}
        if statement_timeout_seconds:
            connect_args["options"] = f"-c statement_timeout={int(statement_timeout_seconds * 1000)}"
        options["connect_args"] = {**connect_args, **options.get("connect_args", {})}
    return sa.create_engine(url, **options)
