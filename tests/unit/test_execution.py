"""The execution config and what a step container is given (no engine needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlops_airflow.containers import container_environment, shared_mounts
from mlops_airflow.execution import DEFAULT_RESOURCES, load_execution
from pipelines.settings import DEFAULT_CONFIG, Settings


def test_defaults_and_environment_overrides(tmp_path):
    cfg = load_execution({})
    assert cfg.mode == "local" and cfg.image.startswith("mlops-step:")
    config = tmp_path / "execution.yaml"
    config.write_text("mode: docker\nimage: a/b:1\nresources:\n  train: {requests: {cpu: '3'}}\n")
    cfg = load_execution({"MLOPS_EXECUTION_CONFIG": str(config), "MLOPS_EXECUTION_MODE": "kubernetes"})
    assert cfg.mode == "kubernetes" and cfg.image == "a/b:1"  # the variable wins over the file
    assert cfg.resources_for("train") == {"requests": {"cpu": "3"}, "limits": {}}
    assert cfg.resources_for("evaluate") == DEFAULT_RESOURCES["evaluate"]
    assert cfg.resources_for("ingest") == DEFAULT_RESOURCES["default"]


def test_unreadable_or_malformed_config_names_the_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ValueError, match=f"MLOPS_EXECUTION_CONFIG={missing}: cannot read"):
        load_execution({"MLOPS_EXECUTION_CONFIG": str(missing)})
    listing = tmp_path / "list.yaml"
    listing.write_text("- mode\n")
    with pytest.raises(ValueError, match="expected a mapping, got list"):
        load_execution({"MLOPS_EXECUTION_CONFIG": str(listing)})
    typo = tmp_path / "typo.yaml"
    typo.write_text("kubernetes: {namespce: mlops}\n")
    with pytest.raises(ValueError, match=r"kubernetes\.namespce: Extra inputs are not permitted"):
        load_execution({"MLOPS_EXECUTION_CONFIG": str(typo)})


def test_containers_inherit_store_variables_but_not_the_execution_settings():
    cfg = load_execution({})
    env = cfg.passed_env(
        {"MLOPS_EXECUTION_MODE": "docker", "AWS_REGION": "eu", "MLFLOW_X": "1", "HOME": "/root", "PATH": "/x"}
    )
    assert env == {"AWS_REGION": "eu", "MLFLOW_X": "1"}


def test_local_stores_are_mounted_at_the_same_path_and_remote_ones_are_not(tmp_path):
    home = tmp_path / "home"
    local = Settings.from_env({"MLOPS_HOME": str(home), "MLOPS_CONFIG": str(DEFAULT_CONFIG)})
    assert shared_mounts(local) == [f"{home}:{home}:rw"]  # artifacts and the SQLite database, nested
    env = container_environment(load_execution({}), local)
    assert "MLOPS_CONFIG" not in env  # the packaged default: the image has its own copy
    assert env["MLOPS_ARTIFACT_ROOT"] == str(home / "artifacts")

    own_config = tmp_path / "configs" / "orders.yaml"
    own_config.parent.mkdir()
    own_config.write_text("{}")
    remote = Settings.from_env(
        {
            "MLOPS_HOME": str(home),
            "MLOPS_ARTIFACT_ROOT": "s3://bucket/mlops",
            "MLFLOW_TRACKING_URI": "http://mlflow:5000",
            "MLOPS_CONFIG": str(own_config),
        }
    )
    assert shared_mounts(remote) == [f"{own_config.parent}:{own_config.parent}:ro"]
    assert container_environment(load_execution({}), remote)["MLOPS_CONFIG"] == str(Path(own_config))
