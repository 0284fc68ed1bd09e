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
    out = check(tool("promtool"), "check", "rules", "resource-rules.yaml", cwd=MONITORING)
    assert "SUCCESS: 4 rules found" in out


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
    for rules in config["rule_files"]:
        shutil.copy(MONITORING / rules, tmp_path)
    out = check(tool("promtool"), "check", "config", "prometheus.yaml", cwd=tmp_path)
    assert "SUCCESS: 2 rules found" in out and "SUCCESS: 4 rules found" in out


def test_promtool_would_catch_a_broken_scrape_config(tmp_path: Path) -> None:
    """The check above can fail: without the mounted token file promtool refuses the config."""
    config = yaml.safe_load((MONITORING / "prometheus.yaml").read_text())
    (job,) = config["scrape_configs"]
    job.pop("kubernetes_sd_configs")
    job["static_configs"] = [{"targets": ["model-server:8000"]}]
    job["authorization"]["credentials_file"] = str(tmp_path / "absent")
    (tmp_path / "prometheus.yaml").write_text(yaml.safe_dump(config))
    for rules in config["rule_files"]:
        shutil.copy(MONITORING / rules, tmp_path)
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


def promtool_test(tmp_path: Path, rules: str, tests: str) -> subprocess.CompletedProcess[str]:
    """``promtool test rules`` of ``tests`` (its unit-test file) on the shipped rule file ``rules``."""
    shutil.copy(MONITORING / rules, tmp_path)
    (tmp_path / "tests.yaml").write_text(tests)
    return subprocess.run(
        [tool("promtool"), "test", "rules", "tests.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_rules_pool_pods_and_survive_restarts_in_prometheus(tmp_path: Path) -> None:
    done = promtool_test(tmp_path, "prometheus-rules.yaml", RULE_TESTS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


# The resource rules on series shaped like kube-state-metrics' and cAdvisor's, in the namespace
# the chart fills in (the file's own placeholder here). Limit 1 GiB; the model server's working set
# at 950 MiB (93%) pages after ten minutes, a step pod's at 800 MiB (78%) never; three restarts in
# half an hour page, one does not; an OOM kill pages at once.
RESOURCE_RULE_TESTS = """
rule_files: [resource-rules.yaml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'container_memory_working_set_bytes{namespace="RELEASE_NAMESPACE",pod="server-1",container="model-server"}'
        values: '996147200x30'
      - series: 'kube_pod_container_resource_limits{namespace="RELEASE_NAMESPACE",pod="server-1",container="model-server",resource="memory"}'
        values: '1073741824x30'
      - series: 'container_memory_working_set_bytes{namespace="STEPS_NAMESPACE",pod="train-1",container="base"}'
        values: '838860800x30'
      - series: 'kube_pod_container_resource_limits{namespace="STEPS_NAMESPACE",pod="train-1",container="base",resource="memory"}'
        values: '1073741824x30'
      - series: 'container_memory_working_set_bytes{namespace="other",pod="x",container="x"}'
        values: '1073741824x30'
      - series: 'kube_pod_container_resource_limits{namespace="other",pod="x",container="x",resource="memory"}'
        values: '1073741824x30'
      - series: 'kube_pod_container_status_restarts_total{namespace="RELEASE_NAMESPACE",pod="server-1",container="model-server"}'
        values: '0 0 0 1 1 2 3 3x23'
      - series: 'kube_pod_container_status_restarts_total{namespace="RELEASE_NAMESPACE",pod="mlflow-1",container="mlflow"}'
        values: '0 1x29'
      - series: 'kube_pod_container_status_last_terminated_reason{namespace="STEPS_NAMESPACE",pod="train-2",container="base",reason="OOMKilled"}'
        values: '1x30'
      - series: 'container_cpu_cfs_periods_total{namespace="RELEASE_NAMESPACE",pod="server-1",container="model-server"}'
        values: '0+600x30'
      - series: 'container_cpu_cfs_throttled_periods_total{namespace="RELEASE_NAMESPACE",pod="server-1",container="model-server"}'
        values: '0+300x30'
    alert_rule_test:
      - {eval_time: 5m, alertname: MemoryNearLimit, exp_alerts: []}
      - eval_time: 15m
        alertname: MemoryNearLimit
        exp_alerts:
          - exp_labels: {namespace: RELEASE_NAMESPACE, pod: server-1, container: model-server, severity: warning}
            exp_annotations:
              summary: server-1/model-server uses 92.77% of its memory limit
              description: >-
                Container model-server of pod server-1 (RELEASE_NAMESPACE) has used more than 90% of its
                memory limit for 10 minutes. Raise the limit in the chart's values (serving.resources,
                mlflow.resources or steps.resources) before the OOM killer does.
              runbook_url: https://github.com/mlops-airflow/mlops-airflow/blob/main/docs/production.md#resources
      - eval_time: 10m
        alertname: ContainerRestarting
        exp_alerts:
          - exp_labels: {namespace: RELEASE_NAMESPACE, pod: server-1, container: model-server, severity: critical}
            exp_annotations:
              summary: server-1/model-server restarted 3 times in 30 minutes
              runbook_url: https://github.com/mlops-airflow/mlops-airflow/blob/main/docs/production.md#resources
      - eval_time: 1m
        alertname: OOMKilled
        exp_alerts:
          - exp_labels: {namespace: STEPS_NAMESPACE, pod: train-2, container: base, severity: critical}
            exp_annotations:
              summary: train-2/base was killed for memory (OOMKilled)
              description: >-
                Container base of pod train-2 (STEPS_NAMESPACE) last ended OOMKilled: raise its memory
                limit (steps.resources.<step> for a pipeline step).
              runbook_url: https://github.com/mlops-airflow/mlops-airflow/blob/main/docs/production.md#resources
      - {eval_time: 10m, alertname: CPUThrottled, exp_alerts: []}
      - eval_time: 28m
        alertname: CPUThrottled
        exp_alerts:
          - exp_labels: {namespace: RELEASE_NAMESPACE, pod: server-1, container: model-server, severity: warning}
            exp_annotations:
              summary: server-1/model-server is throttled in 50% of CPU periods
              runbook_url: https://github.com/mlops-airflow/mlops-airflow/blob/main/docs/production.md#resources
"""  # noqa: E501 (series and alert labels as promtool reads them, one per line)


def test_the_resource_rules_page_on_memory_restarts_oom_and_throttling(tmp_path: Path) -> None:
    done = promtool_test(tmp_path, "resource-rules.yaml", RESOURCE_RULE_TESTS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def test_the_resource_rules_test_can_fail(tmp_path: Path) -> None:
    """The check above can fail: a limit raised to 2 GiB leaves the server at 46%, and promtool
    reports the alert it expected and did not see."""
    raised = RESOURCE_RULE_TESTS.replace("'1073741824x30'", "'2147483648x30'", 1)
    done = promtool_test(tmp_path, "resource-rules.yaml", raised)
    assert done.returncode != 0 and "MemoryNearLimit" in done.stdout + done.stderr
