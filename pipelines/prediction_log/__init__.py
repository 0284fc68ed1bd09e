"""The prediction log: one row per scored row, durable, joinable with feedback labels.

Two stores behind one interface:

- **Parquet** (embedded default): the server appends JSON lines to a local
  spool segment and returns only after the write reached the operating system
  (``fsync`` too when asked), so an acknowledged prediction survives a crash or
  restart of the server. Sealed segments are compacted into Parquet parts
  under ``{artifact_root}/predictions/{model}/date=YYYY-MM-DD/``, written
  atomically and named after the segment, so a crash between compaction and
  clean-up rewrites the same part instead of duplicating rows. Readers see the
  parts and any segment not yet compacted.
- **PostgreSQL** (production): rows are inserted in the request's transaction,
  committed before the answer leaves; feedback is an upsert.

Feature values are stored as ``input.<feature>`` columns so that drift checks
can compare them with the training reference column by column.
"""

from pipelines.prediction_log.base import (
    CLOCKS,
    COLUMNS,
    FEEDBACK_COLUMNS,
    FEEDBACK_DAY_FILE,
    INPUT_PREFIX,
)
from pipelines.prediction_log.parquet import ParquetPredictionLog
from pipelines.prediction_log.postgres import (
    READ_TIMEOUT_SECONDS,
    STATEMENT_TIMEOUT_SECONDS,
    SqlPredictionLog,
)
from pipelines.prediction_log.reading import with_feedback
from pipelines.prediction_log.selection import open_log

__all__ = [
    "CLOCKS",
    "COLUMNS",
    "FEEDBACK_COLUMNS",
    "FEEDBACK_DAY_FILE",
    "INPUT_PREFIX",
    "READ_TIMEOUT_SECONDS",
    "STATEMENT_TIMEOUT_SECONDS",
    "ParquetPredictionLog",
    "SqlPredictionLog",
    "open_log",
    "with_feedback",
]
