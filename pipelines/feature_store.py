"""The feature store (Feast): one set of feature definitions for training and for serving.

A dataset config with a ``feature_store`` section declares feature views (see
:class:`pipelines.config.FeatureView`). From them this module

- builds the offline tables from the data itself (``build``): a ``table`` view copies a
  timestamped table (e.g. hourly weather by airport); a ``rolling_rate`` view computes, per
  entity and day, the label's rate over the previous ``window_days`` from rows whose outcome
  was known ``lag_days`` before the day starts, so a value never looks into its own future;
- joins them onto training rows point-in-time correctly through Feast's
  ``get_historical_features`` (``historical``): each row gets the latest value stamped at or
  before its own time, within the view's TTL;
- materializes the latest values into the online store (``materialize``), and completes
  key-only requests at serving time (:class:`OnlineFeatures`).

Where the stores live (environment, never code), the Feast ``RepoConfig`` and the view
definitions are :mod:`pipelines.feature_repo`; its public names are re-exported here.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from datetime import datetime
from typing import Any

import pandas as pd

from pipelines import storage
from pipelines.config import Dataset, FeatureView
from pipelines.errors import DataError, PipelineError
from pipelines.feature_repo import (
    EVENT_TIMESTAMP,
    REDIS_TIMEOUT_SECONDS,
    Location,
    definitions,
    open_store,
    redis_connection_string,
    store_config,
    table_name,
)
from pipelines.settings import Settings
from pipelines.util import plain

__all__ = [
    "EVENT_TIMESTAMP",
    "REDIS_TIMEOUT_SECONDS",
    "Location",
    "OnlineFeatures",
    "build",
    "build_tables",
    "definitions",
    "historical",
    "label_rows",
    "materialize",
    "open_store",
    "redis_connection_string",
    "rolling_rate",
    "with_store_features",
    "write_tables",
]

log = logging.getLogger(__name__)


def label_rows(frame: pd.DataFrame, dataset: Dataset) -> pd.Series:
    """The label of each row that has one (rows missing a required column are dropped), as ingest labels."""
    from pipelines.dataset import label_frame

    labelled, _ = label_frame(frame.copy(), dataset)
    return labelled[dataset.target.name]


def rolling_rate(
    frame: pd.DataFrame, labels: pd.Series, view: FeatureView, time_column: str, until: datetime
) -> pd.DataFrame:
    """Per entity and day: the label's rate and count over ``window_days``, from rows known by then.

    The value stamped at day ``D`` (00:00 UTC) uses rows with times in
    ``[D - lag - window, D - lag)``: outcomes known before ``D`` starts.
    """
    rows = frame.loc[labels.index, [*view.entities, time_column]].copy()
    rows["label"] = labels.astype(float)
    rows["day"] = pd.to_datetime(rows[time_column], utc=True).dt.floor("D")
    daily = rows.groupby([*view.entities, "day"], observed=True)["label"].agg(["sum", "count"])
    days = pd.date_range(
        rows["day"].min(), pd.Timestamp(until).tz_convert("UTC").floor("D"), freq="D", tz="UTC"
    )
    out = []
    for key, part in daily.groupby(level=list(range(len(view.entities))), observed=True):
        series = part.droplevel(list(range(len(view.entities)))).reindex(days, fill_value=0)
        window = series.rolling(view.window_days, min_periods=1).sum().shift(view.lag_days + 1)
        block = pd.DataFrame(
            {
                view.features[0]: window["sum"] / window["count"].where(window["count"] > 0),
                view.features[1]: window["count"].fillna(0).astype(float),
                EVENT_TIMESTAMP: days,
            }
        )
        for name, value in zip(view.entities, key if isinstance(key, tuple) else (key,), strict=True):
            block[name] = str(value)
        out.append(block.iloc[view.lag_days + 1 :])
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def _table_view(view: FeatureView, dataset: Dataset, history: pd.DataFrame) -> pd.DataFrame:
    from pipelines import sources

    table = sources.read_table(view.uri) if view.uri else history  # no uri: the dataset's own rows
    time_column = view.timestamp or dataset.time_column
    missing = [c for c in [*view.entities, time_column, *view.features] if c not in table.columns]
    if missing:
        raise DataError(f"feature view {view.name!r}: its table lacks columns {missing}")
    out = table[[*view.entities, time_column, *view.features]].copy()
    out[EVENT_TIMESTAMP] = pd.to_datetime(out.pop(time_column), utc=True, format="ISO8601")
    for entity in view.entities:
        out[entity] = out[entity].astype("string").astype(object)
    for feature in view.features:
        if feature in dataset.features.numeric:
            out[feature] = pd.to_numeric(out[feature], errors="coerce").astype("float64")
        else:
            out[feature] = out[feature].astype("string").astype(object)
    out = out.dropna(subset=view.entities)
    return out.drop_duplicates([*view.entities, EVENT_TIMESTAMP], keep="last").reset_index(drop=True)


def build_tables(dataset: Dataset, history: pd.DataFrame, until: datetime) -> dict[str, pd.DataFrame]:
    """Every view's offline table from the source rows before ``until`` (and its lookup tables)."""
    store = store_config(dataset)
    history = history.loc[pd.to_datetime(history[dataset.time_column], utc=True) < pd.Timestamp(until)]
    tables = {}
    labels = None
    for view in store.views:
        if view.kind == "rolling_rate":
            if labels is None:
                labels = label_rows(history, dataset)
            tables[view.name] = rolling_rate(history, labels, view, dataset.time_column, until)
        else:
            table = _table_view(view, dataset, history)
            tables[view.name] = table.loc[table[EVENT_TIMESTAMP] < pd.Timestamp(until)]
    return tables


def write_tables(settings: Settings, dataset: Dataset, tables: dict[str, pd.DataFrame]) -> dict[str, int]:
    """Replace the offline tables (atomically: a reader sees the old or the new table, never half)."""
    store = store_config(dataset)
    where = Location.from_env(settings)
    views = {v.name: v for v in store.views}
    if where.offline_is_sql:
        import sqlalchemy as sa

        engine = storage.sql_engine(where.offline, statement_timeout_seconds=1800)
        try:
            with engine.begin() as conn:  # one transaction: drop and refill together
                for name, table in tables.items():
                    table.to_sql(table_name(store, views[name]), conn, if_exists="replace", index=False)
        except sa.exc.OperationalError as exc:
            raise PipelineError(f"cannot write the offline feature store: {exc.orig}") from exc
        finally:
            engine.dispose()
    else:
        for name, table in tables.items():
            storage.write_parquet(storage.join(where.offline, f"{name}.parquet"), table)
    return {name: len(table) for name, table in tables.items()}


def build(settings: Settings, dataset: Dataset, until: datetime) -> dict[str, Any]:
    """Compute and write the offline tables up to ``until``, register the definitions in Feast."""
    from pipelines import sources

    store = store_config(dataset)
    earliest = datetime(1970, 1, 1, tzinfo=pd.Timestamp(until).tzinfo or None)
    history = sources.read_window(dataset, earliest, until)
    if history.empty:
        raise DataError(f"no source rows before {until}: nothing to build features from")
    tables = build_tables(dataset, history, until)
    rows = write_tables(settings, dataset, tables)
    feast_store = open_store(settings, store)
    feast_store.apply(definitions(settings, dataset))
    log.info("feature store %s: offline tables %s", store.project, rows)
    return {"project": store.project, "rows": rows, "until": pd.Timestamp(until).isoformat()}


def historical(settings: Settings, dataset: Dataset, frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the training views' features joined point-in-time at ``dataset.time_column``."""
    store = store_config(dataset)
    views = [v for v in store.views if v.training]
    if not views:
        return frame
    entities = list(dict.fromkeys(e for v in views for e in v.entities))
    missing = [c for c in entities if c not in frame.columns]
    if missing:
        raise DataError(f"rows lack the feature store's entity columns {missing}")
    entity_df = frame[entities].astype("string").astype(object)
    entity_df[EVENT_TIMESTAMP] = pd.to_datetime(frame[dataset.time_column], utc=True)
    entity_df["__row"] = range(len(frame))
    refs = [f"{v.name}:{f}" for v in views for f in v.features]
    feast_store = open_store(settings, store)
    joined = feast_store.get_historical_features(entity_df=entity_df, features=refs).to_df()
    joined = joined.sort_values("__row").set_index("__row")
    out = frame.drop(columns=[f for f in store.training_features if f in frame.columns]).copy()
    features = store.training_features
    for feature in features:
        out[feature] = joined[feature].to_numpy()
    return out


def materialize(settings: Settings, dataset: Dataset, start: datetime, end: datetime) -> dict[str, Any]:
    """Load the values of ``[start, end)`` into the online store (the latest per entity wins)."""
    store = store_config(dataset)
    feast_store = open_store(settings, store)
    with contextlib.redirect_stdout(sys.stderr):  # its progress bars are not the step's result
        feast_store.materialize(start_date=start, end_date=end)
    log.info("materialized %s into the online store for [%s, %s)", store.project, start, end)
    return {"project": store.project, "start": start.isoformat(), "end": end.isoformat()}


class OnlineFeatures:
    """Completes request records with online features for the entity keys they carry.

    Views are looked up in rounds: a view whose entity keys a record has (sent by the client,
    or found by an earlier view, e.g. ``dest`` from a flight's schedule) fills the features the
    record lacks. Values the client sent win over the store's.
    """

    def __init__(self, settings: Settings, dataset: Dataset):
        self.dataset = dataset
        self.store = open_store(settings, store_config(dataset))
        self.views = list(store_config(dataset).views)

    def enrich(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Fill missing features in place; return what the store did not know.

        One entry per record and view with no value for the record's keys (an unknown flight,
        or a value older than the view's TTL): ``{"row", "view", "keys", "features"}``.
        """
        unknown: list[dict[str, Any]] = []
        index = {id(r): i for i, r in enumerate(records)}
        pending = list(self.views)
        progress = True
        while pending and progress:
            progress = False
            for view in list(pending):
                rows = [
                    r
                    for r in records
                    if isinstance(r, dict) and all(r.get(e) is not None for e in view.entities)
                ]
                if not rows:
                    continue
                pending.remove(view)
                progress = True
                wanted = [f for f in view.features if any(f not in r for r in rows)]
                if not wanted:
                    continue
                found = self.store.get_online_features(
                    features=[f"{view.name}:{f}" for f in wanted],
                    entity_rows=[{e: str(r[e]) for e in view.entities} for r in rows],
                ).to_dict()
                for i, record in enumerate(rows):
                    values = {f: plain(found[f][i]) for f in wanted if f not in record}
                    if values and all(v is None for v in values.values()):
                        unknown.append(
                            {"row": index[id(record)], "view": view.name,
                             "keys": {e: record[e] for e in view.entities}, "features": sorted(values)}
                        )  # fmt: skip
                        continue  # left absent: the model's schema decides if the row can score
                    record.update(values)
        return unknown


def with_store_features(
    settings: Settings, dataset: Dataset, frame: pd.DataFrame, until: datetime
) -> pd.DataFrame:
    """Source rows with the feature store's features joined point-in-time (as is without a store).

    The offline tables are brought up to ``until`` first: they derive from the same source, so
    training never waits for a separate feature run, and never reads past its own window.
    """
    if dataset.feature_store is None or frame.empty:
        return frame
    build(settings, dataset, until)
    return historical(settings, dataset, frame)
