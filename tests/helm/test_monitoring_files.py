"""The shipped Prometheus and Alertmanager files, checked by the tools of those projects.

``promtool`` and ``amtool`` are Debian's (``make install`` installs them with Prometheus and
Alertmanager). Debian builds Prometheus 2.42 without Kubernetes service discovery, so its
``promtool check config`` cannot parse ``kubernetes_sd_configs``: the scrape config is checked with
that one block swapped for a static target, everything else as shipped (and the admin-token file,
which Kubernetes mounts, present).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

MONITORING = Path(__file__).resolve().parents[2] / "helm" / "mlops" / "files" / "monitoring"


def tool(name: str) -> str:
    found = shutil.which(name)
    assert found, f"{name} is missing: `make install` installs Debian's prometheus and alertmanager"
    return found


def check(*args: str, cwd: Path) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_the_rules_pass_promtool() -> None:
    out = check(tool("promtool"), "check", "rules", "prometheus-rules.yaml", cwd=MONITORING)
    assert "SUCCESS: 2 rules found" in out


def test_the_alertmanager_config_passes_amtool() -> None:
    out = check(tool("amtool"), "check-config", "alertmanager.yaml", cwd=MONITORING)
    assert "SUCCESS" in out


def test_the_scrape_config_passes_promtool(tmp_path: Path) -> None:
    config = yaml.safe_load((MONITORING / "prometheus.yaml").read_text())
    (job,) = config["scrape_configs"]
    discovery = [{"role": "pod", "namespaces": {"names": ["RELEASE_NAMESPACE"]}}]
    assert job.pop("kubernetes_sd_configs") == discovery
    job["static_configs"] = [{"targets": ["model-server:8000"]}]
    token = Path(job["authorization"]["credentials_file"])
    job["authorization"]["credentials_file"] = str(tmp_path / token.name)
    (tmp_path / token.name).write_text("admin-token\n")
    (tmp_path / "prometheus.yaml").write_text(yaml.safe_dump(config))
    shutil.copy(MONITORING / "prometheus-rules.yaml", tmp_path)
    out = check(tool("promtool"), "check", "config", "prometheus.yaml", cwd=tmp_path)
    assert "SUCCESS: 2 rules found" in out


def test_promtool_would_catch_a_broken_scrape_config(tmp_path: Path) -> None:
    """The check above can fail: without the mounted token file promtool refuses the config."""
    config = yaml.safe_load((MONITORING / "prometheus.yaml").read_text())
    (job,) = config["scrape_configs"]
    job.pop("kubernetes_sd_configs")
    job["static_configs"] = [{"targets": ["model-server:8000"]}]
    job["authorization"]["credentials_file"] = str(tmp_path / "absent")
    (tmp_path / "prometheus.yaml").write_text(yaml.safe_dump(config))
    shutil.copy(MONITORING / "prometheus-rules.yaml", tmp_path)
    done = subprocess.run(
        [tool("promtool"), "check", "config", "prometheus.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode != 0


# promtool's rule unit tests: the shipped rules evaluated by Prometheus' own engine on series
# shaped like two model-server pods' /metrics. 100 values a minute per pod; mean 10, std 2.
RULE_TESTS = """
rule_files: [prometheus-rules.yaml]
evaluation_interval: 1m
tests:
  # no drift, and pod p1's container restarts at minute 60 (its counters start again at 0):
  # a restart is not a drift (delta() of a running-sum gauge fired here, 10 std off)
  - interval: 1m
    input_series:
      - series: 'mlops_feature_value_positive_sum_total{model="m",feature="f",pod="p1"}'
        values: '0+1000x60 0+1000x60'
      - series: 'mlops_feature_value_negative_sum_total{model="m",feature="f",pod="p1"}'
        values: '0x121'
      - series: 'mlops_feature_value_count_total{model="m",feature="f",pod="p1"}'
        values: '0+100x60 0+100x60'
      - series: 'mlops_feature_reference_mean{model="m",feature="f",pod="p1"}'
        values: '10x121'
      - series: 'mlops_feature_reference_std{model="m",feature="f",pod="p1"}'
        values: '2x121'
    alert_rule_test:
      - {eval_time: 55m, alertname: FeatureDrift, exp_alerts: []}
      - {eval_time: 80m, alertname: FeatureDrift, exp_alerts: []}
  # two pods: p1 at the training mean, p2 at +4 (a quarter of the traffic): pooled, the mean is
  # 10 + 1 = 11, half a std off: one alert for the model and feature, not one per pod
  - interval: 1m
    input_series:
      - series: 'mlops_feature_value_positive_sum_total{model="m",feature="f",pod="p1"}'
        values: '0+1500x60'
      - series: 'mlops_feature_value_count_total{model="m",feature="f",pod="p1"}'
        values: '0+150x60'
      - series: 'mlops_feature_value_negative_sum_total{model="m",feature="f",pod="p1"}'
        values: '0x60'
      - series: 'mlops_feature_value_positive_sum_total{model="m",feature="f",pod="p2"}'
        values: '0+700x60'
      - series: 'mlops_feature_value_count_total{model="m",feature="f",pod="p2"}'
        values: '0+50x60'
      - series: 'mlops_feature_value_negative_sum_total{model="m",feature="f",pod="p2"}'
        values: '0x60'
      - series: 'mlops_feature_reference_mean{model="m",feature="f",pod="p1"}'
        values: '10x60'
      - series: 'mlops_feature_reference_mean{model="m",feature="f",pod="p2"}'
        values: '10x60'
      - series: 'mlops_feature_reference_std{model="m",feature="f",pod="p1"}'
        values: '1.9x60'
      - series: 'mlops_feature_reference_std{model="m",feature="f",pod="p2"}'
        values: '1.9x60'
    alert_rule_test:
      - eval_time: 50m
        alertname: FeatureDrift
        exp_alerts:
          - exp_labels: {model: m, feature: f, severity: warning, mlops_action: retrain}
            exp_annotations:
              summary: f moved 0.53 training standard deviations
              description: >-
                The mean of feature f served by model m (all pods) over the last 30 minutes is 0.53
                training standard deviations from its training mean.
              runbook_url: https://github.com/mlops-airflow/mlops-airflow#monitor-and-retrain
  # a negative feature (dew point below zero): mean -5 both in training and served, no alert
  - interval: 1m
    input_series:
      - series: 'mlops_feature_value_positive_sum_total{model="m",feature="dewp",pod="p1"}'
        values: '0+100x60'
      - series: 'mlops_feature_value_negative_sum_total{model="m",feature="dewp",pod="p1"}'
        values: '0+600x60'
      - series: 'mlops_feature_value_count_total{model="m",feature="dewp",pod="p1"}'
        values: '0+100x60'
      - series: 'mlops_feature_reference_mean{model="m",feature="dewp",pod="p1"}'
        values: '-5x60'
      - series: 'mlops_feature_reference_std{model="m",feature="dewp",pod="p1"}'
        values: '3x60'
    alert_rule_test:
      - {eval_time: 50m, alertname: FeatureDrift, exp_alerts: []}
"""


def test_the_rules_pool_pods_and_survive_restarts_in_prometheus(tmp_path: Path) -> None:
    shutil.copy(MONITORING / "prometheus-rules.yaml", tmp_path)
    (tmp_path / "tests.yaml").write_text(RULE_TESTS)
    out = check(tool("promtool"), "test", "rules", "tests.yaml", cwd=tmp_path)
    assert "SUCCESS" in out
