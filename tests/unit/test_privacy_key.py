"""The pseudonymisation key: the public default only on one machine, and a fingerprint per model."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines import privacy
from pipelines.errors import ConfigError


def test_the_public_default_key_is_refused_outside_the_embedded_profile():
    with pytest.raises(ConfigError, match="MLOPS_PII_KEY is not set: outside the embedded profile"):
        privacy._key({"MLOPS_ARTIFACT_ROOT": "s3://bucket/artifacts"})
    assert privacy._key({"MLOPS_ARTIFACT_ROOT": "/srv/mlops/artifacts"}) == privacy.DEFAULT_KEY.encode()
    assert privacy._key({}) == privacy.DEFAULT_KEY.encode()
    assert privacy._key({"MLOPS_ARTIFACT_ROOT": "s3://b/a", "MLOPS_PII_KEY": "k"}) == b"k"


def test_the_public_default_key_is_refused_in_a_kubernetes_pod_even_on_a_shared_volume():
    """Review 3, L1: the chart's shared-store mode keeps artifacts on a cluster volume (a local path
    in the pod), which counted as the embedded profile: step pods and servers got the public key."""
    pod = {"MLOPS_ARTIFACT_ROOT": "/mlops/artifacts", "KUBERNETES_SERVICE_HOST": "10.96.0.1"}
    with pytest.raises(ConfigError, match="MLOPS_PII_KEY is not set: outside the embedded profile"):
        privacy._key(pod)
    assert privacy._key({**pod, "MLOPS_PII_KEY": "from-the-data-secret"}) == b"from-the-data-secret"


def test_the_fingerprint_names_the_key_without_revealing_it():
    one = privacy.key_fingerprint({"MLOPS_PII_KEY": "first-secret"})
    assert one == privacy.key_fingerprint({"MLOPS_PII_KEY": "first-secret"})
    assert one != privacy.key_fingerprint({"MLOPS_PII_KEY": "second-secret"})
    assert len(one) == 16 and "first" not in one


def test_a_server_with_personal_fields_and_no_key_does_not_start(tmp_path):
    """Regression: the server hashed requests with the public default key in production."""
    import yaml

    from pipelines.serving.config import ServingSettings

    flights = Path(privacy.__file__).parent / "datasets" / "flights.yaml"
    config = yaml.safe_load(flights.read_text())
    config["dataset"]["personal_data"]["allowed_as_features"] = ["tailnum"]
    path = tmp_path / "flights.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {"MLOPS_CONFIG": str(path), "MLOPS_HOME": str(tmp_path), "MLOPS_ARTIFACT_ROOT": "s3://bucket/a"}
    with pytest.raises(ConfigError, match="MLOPS_PII_KEY is not set"):
        ServingSettings.from_env(env)
    started = ServingSettings.from_env({**env, "MLOPS_PII_KEY": "from-a-secret"})
    assert started.pii_fingerprint == privacy.key_fingerprint({"MLOPS_PII_KEY": "from-a-secret"})
