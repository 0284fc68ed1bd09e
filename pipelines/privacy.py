"""Personal data: pseudonymised at the boundary, so no store, log or report holds a raw value.

A dataset config names its personal-data columns (``dataset.personal_data``). Ingest drops
them, except keys and columns the config allows as features: those are replaced by a keyed
hash (HMAC-SHA256 with ``MLOPS_PII_KEY``, from a Kubernetes Secret or an Airflow connection in
production) before anything is written. The model server applies the same hash to a request's
personal fields before scoring and logging, so a model trained on pseudonyms scores pseudonyms
and the prediction log never sees the raw value.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Iterable
from typing import Any

import pandas as pd

from pipelines.config import Dataset
from pipelines.errors import ConfigError

log = logging.getLogger(__name__)
PREFIX = "pii:"
KEY_ENV = "MLOPS_PII_KEY"
# A fixed default keeps the embedded profile (one machine, local files) working out of the box.
# It is public, so its pseudonyms are only as strong as a plain hash: tail numbers, a short list,
# are reversed by hashing them all. Anywhere else (an object store, a cluster) it is refused.
DEFAULT_KEY = "mlops-embedded-default"
# Model versions record the fingerprint of the key their training data was pseudonymised with.
FINGERPRINT_TAG = "pii.key_fingerprint"


def _embedded(env: os._Environ | dict[str, str]) -> bool:
    """One machine, local files. A Kubernetes pod (the kubelet sets KUBERNETES_SERVICE_HOST in every
    container) never is, even when its artifacts are a local path on a shared volume."""
    if env.get("KUBERNETES_SERVICE_HOST"):
        return False
    root = env.get("MLOPS_ARTIFACT_ROOT") or ""
    return "://" not in root or root.startswith("file://")


def _key(env: os._Environ | dict[str, str] | None = None) -> bytes:
    """The pseudonymisation key; the public default only in the embedded profile."""
    env = os.environ if env is None else env
    key = env.get(KEY_ENV)
    if key:
        return key.encode()
    if not _embedded(env):
        raise ConfigError(
            f"{KEY_ENV} is not set: outside the embedded profile (artifacts in"
            f" {env.get('MLOPS_ARTIFACT_ROOT')}, or a Kubernetes pod) the public default key would let"
            " anyone reverse the pseudonyms by hashing every possible value; set it from a secret"
        )
    return DEFAULT_KEY.encode()


def key_fingerprint(env: os._Environ | dict[str, str] | None = None) -> str:
    """Names the key without revealing it: a model and a server can tell whether theirs match."""
    return hmac.new(_key(env), b"mlops pii key fingerprint", hashlib.sha256).hexdigest()[:16]


def mask_value(value: Any, key: bytes | None = None) -> Any:
    """``pii:<16 hex>`` for a value, None stays None; an already masked value is kept."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    text = str(value)
    if text.startswith(PREFIX):
        return text
    digest = hmac.new(key or _key(), text.encode(), hashlib.sha256).hexdigest()[:16]
    return PREFIX + digest


def mask_series(series: pd.Series) -> pd.Series:
    """Mask each distinct value once (columns repeat values a lot)."""
    key = _key()
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    masked = [mask_value(v, key) for v in uniques]
    out = pd.Series([masked[c] if c >= 0 else None for c in codes], index=series.index, dtype=object)
    return out


def kept_columns(dataset: Dataset) -> list[str]:
    """Personal columns a snapshot keeps (pseudonymised): keys and features the config allows."""
    personal = dataset.personal_data.columns
    allowed = set(dataset.personal_data.allowed_as_features) | set(dataset.key)
    return [c for c in personal if c in allowed]


def pseudonymise(frame: pd.DataFrame, dataset: Dataset) -> pd.DataFrame:
    """Drop personal columns the pipeline does not need; mask the ones it keeps."""
    personal = [c for c in dataset.personal_data.columns if c in frame.columns]
    if not personal:
        return frame
    keep = set(kept_columns(dataset))
    dropped = [c for c in personal if c not in keep]
    out = frame.drop(columns=dropped)
    for column in personal:
        if column in keep:
            out[column] = mask_series(out[column])
    log.info("personal data: dropped %s, pseudonymised %s", dropped, sorted(keep & set(personal)))
    return out


def mask_records(records: Iterable[Any], columns: Iterable[str]) -> None:
    """Mask personal fields of JSON records in place (the model server, before scoring)."""
    columns = tuple(columns)
    if not columns:
        return
    key = _key()
    for record in records:
        if isinstance(record, dict):
            for column in columns:
                # A scalar is masked; anything else (a list, an object) is no value of a column and
                # is left for the signature check to refuse, naming the field: str() of a value
                # nested 1000 deep raised RecursionError here, a 500.
                if isinstance(record.get(column), str | int | float):
                    record[column] = mask_value(record[column], key)
