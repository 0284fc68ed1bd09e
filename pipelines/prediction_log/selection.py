"""Which store a profile's settings select for a model's prediction log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines import storage
from pipelines.prediction_log.parquet import ParquetPredictionLog
from pipelines.prediction_log.postgres import SqlPredictionLog
from pipelines.settings import Settings


def open_log(
    settings: Settings, model_name: str, *, writer: bool = True, **options: Any
) -> ParquetPredictionLog | SqlPredictionLog:
    """The prediction log of ``model_name`` in the profile's store (``writer=False`` to only read)."""
    url = settings.prediction_log_url
    if url and url.split(":", 1)[0].startswith("postgresql"):
        return SqlPredictionLog(url, model_name)
    root = url or storage.join(settings.artifact_root, "prediction_log")
    spool = Path(settings.prediction_spool or settings.home / "serving" / "spool")
    return ParquetPredictionLog(
        storage.join(root, storage.safe_segment(model_name)),
        spool / storage.safe_segment(model_name),
        writer=writer,
        **options,
    )
