"""The Helm chart (helm/mlops), rendered and linted with the real Helm engine (helm-python-sdk).

No cluster and no network: every manifest is validated offline against the Kubernetes 1.37
OpenAPI schemas (kubernetes-validate), then checked for the security and wiring the system
relies on. The Airflow dependency is declared but not downloaded, so its templates are absent.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

CHART = Path(__file__).resolve().parents[2] / "helm" / "mlops"
RELEASE, NAMESPACE = "mlops", "ml"
KUBE_VERSION = "1.37.0"
MISSING_AIRFLOW = "chart directory is missing these dependencies: airflow"
# kubernetes-validate knows only built-in kinds; this CRD kind is skipped, nothing else.
CRD_KINDS = {"PrometheusRule", "PodMonitor"}
ROLLOUT_FILES = ["values-embedded.yaml", "values-production.yaml"]


def values_file(name: str) -> dict[str, Any]:
    return yaml.safe_load((CHART / name).read_text()) or {}


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`base` with `override` merged in, key by key (like a second -f file)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = (
            merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def render(values: dict[str, Any] | str) -> list[dict[str, Any]]:
    """Render the chart with a values file (name) or dict; every manifest document, NOTES left out."""
    if isinstance(values, str):
        values = values_file(values)
    chart = helm_python.Chart.load(str(CHART))
    rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def lint_problems(values: dict[str, Any]) -> list[dict[str, Any]]:
    result = helm_python.lint(str(CHART), values, strict=False, kube_version=KUBE_VERSION)
    problems = [m for m in result["messages"] if m["severity"] >= 2 and m["error"] != MISSING_AIRFLOW]
    return problems + [{"error": e} for e in result.get("errors") or []]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in by_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every pod the chart runs: the workloads' templates and bare Pods (`helm test`'s smoke pod)."""
    specs = {
        f"{d['kind']}/{d['metadata']['name']}": d["spec"]["template"]["spec"]
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet", "Job")
    }
    specs.update({f"Pod/{d['metadata']['name']}": d["spec"] for d in docs if d["kind"] == "Pod"})
    return specs


@pytest.fixture(scope="module", params=ROLLOUT_FILES)
def rollout(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(request.param)


# --- engine: render, lint, schema validation ------------------------------------------------


@pytest.mark.parametrize("name", ROLLOUT_FILES)
def test_lint_is_clean(name: str) -> None:
    assert lint_problems(values_file(name)) == []


def test_manifests_validate_against_kubernetes(rollout: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = rollout
    skipped = set()
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            skipped.add(doc["kind"])
            continue
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    monitoring = values_file(name)["monitoring"]
    crds = {"PrometheusRule": "prometheusRule", "PodMonitor": "podMonitor"}
    expected = {kind for kind, key in crds.items() if monitoring.get(key, {}).get("enabled")}
    assert skipped == expected


def test_default_values_do_not_render_alone() -> None:
    """values.yaml alone is production-shaped: it needs a database, a token and an S3 bucket."""
    with pytest.raises(helm_python.HelmError, match=r" is required"):
        render({})
    mlflow_auth = {
        "adminPassword": "a",
        "pipelinePassword": "p",
        "serverPassword": "s",
        "flaskSecretKey": "k",
    }
    almost = {
        "mlflow": {"backendStore": {"uri": "postgresql://u:p@db:5432/mlflow"}, "auth": mlflow_auth},
        "monitoring": {"alertToken": {"value": "t"}},
        "serving": {"auth": {"token": "p", "feedbackToken": "f", "adminToken": "a", "secret": "s" * 16}},
    }
    with pytest.raises(
        helm_python.HelmError, match=r"stores\.s3\.bucket is required when sharedStore\.enabled is false"
    ):
        render(almost)
    docs = render(merged(almost, {"stores": {"s3": {"bucket": "b"}}}))
    for doc in docs:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


# --- security -------------------------------------------------------------------------------


def test_pods_run_non_root_and_locked_down(rollout: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rollout
    specs = pod_specs(docs)
    assert specs
    for where, spec in specs.items():
        uid = 999 if "postgresql" in where else 10001  # the postgres image's own user
        ctx = spec["securityContext"]
        assert ctx["runAsNonRoot"] is True, where
        assert (ctx["runAsUser"], ctx["runAsGroup"], ctx["fsGroup"]) == (uid, uid, uid), where
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["automountServiceAccountToken"] is False, where
        for container in spec["containers"] + spec.get("initContainers", []):
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, (where, container["name"])
            assert sc["readOnlyRootFilesystem"] is True, (where, container["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (where, container["name"])
            assert container["resources"]["requests"] and container["resources"]["limits"], (
                where,
                container["name"],
            )


def test_servers_have_probes(rollout: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rollout
    serving = one(docs, "Deployment", f"{RELEASE}-model-server")["spec"]["template"]["spec"]["containers"][0]
    # /ready is open with auth on too (it says only ready/not ready without the admin token)
    assert serving["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert serving["livenessProbe"]["httpGet"]["path"] == "/health"
    assert "startupProbe" in serving
    mlflow = one(docs, "Deployment", f"{RELEASE}-mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert (
        mlflow["readinessProbe"]["httpGet"]["path"] == mlflow["livenessProbe"]["httpGet"]["path"] == "/health"
    )


def test_model_server_pod(rollout: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rollout
    deployment = one(docs, "Deployment", f"{RELEASE}-model-server")
    spec = deployment["spec"]["template"]["spec"]
    container = spec["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_TRACKING_URI"]["value"] == f"http://{RELEASE}-mlflow:5000"
    assert env["MLOPS_SERVING_MODEL"]["value"] == "flights-delay"
    assert (env["MLOPS_HOME"]["value"], env["HOME"]["value"]) == ("/var/lib/mlops", "/tmp")
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/tmp", "/var/lib/mlops"} <= mounts
    assert spec["serviceAccountName"] == f"{RELEASE}-model-server"
    sa = one(docs, "ServiceAccount", f"{RELEASE}-model-server")
    assert sa["automountServiceAccountToken"] is False
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    service = one(docs, "Service", f"{RELEASE}-model-server")
    assert service["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http"}]


def test_production_model_server_auth_and_prediction_log() -> None:
    docs = render("values-production.yaml")
    spec = one(docs, "Deployment", f"{RELEASE}-model-server")["spec"]["template"]["spec"]
    env = {e["name"]: e for e in spec["containers"][0]["env"]}
    assert {name: env[name]["value"] for name in env if name.endswith("_FILE")} == {
        "MLOPS_SERVING_TOKEN_FILE": "/var/run/secrets/mlops/token",
        "MLOPS_SERVING_FEEDBACK_TOKEN_FILE": "/var/run/secrets/mlops/feedback-token",
        "MLOPS_SERVING_ADMIN_TOKEN_FILE": "/var/run/secrets/mlops/admin-token",
        "MLOPS_SERVING_SECRET_FILE": "/var/run/secrets/mlops/secret",
    }
    assert env["MLOPS_PREDICTION_LOG"]["valueFrom"]["secretKeyRef"] == {
        "name": "mlops-prediction-log",
        "key": "url",
    }
    auth = next(v for v in spec["volumes"] if v["name"] == "serving-auth")
    assert auth["secret"]["secretName"] == "mlops-serving-token"
    assert [i["key"] for i in auth["secret"]["items"]] == ["token", "feedback-token", "admin-token", "secret"]


def test_feature_store_and_pii_key_come_from_a_secret_for_server_and_steps() -> None:
    """``dataSecret`` (MLOPS_FEATURE_*, MLOPS_PII_KEY) reaches the model server and every step pod."""
    values = merged(values_file("values-production.yaml"), {"dataSecret": "mlops-data"})
    docs = render(values)
    spec = one(docs, "Deployment", f"{RELEASE}-model-server")["spec"]["template"]["spec"]
    assert {"secretRef": {"name": "mlops-data"}} in spec["containers"][0]["envFrom"]
    assert {"secretRef": {"name": "mlops-stores"}} in spec["containers"][0]["envFrom"]
    config = execution_config(docs)
    assert config["kubernetes"]["env_from"] == [
        {"secretRef": {"name": "mlops-stores"}},
        {"secretRef": {"name": "mlops-data"}},
    ]
    plain = execution_config(render("values-production.yaml"))  # unset: nothing extra
    assert plain["kubernetes"]["env_from"] == [{"secretRef": {"name": "mlops-stores"}}]


def test_rbac_is_minimal(rollout: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rollout
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}
    (role,) = by_kind(docs, "Role")
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): sorted(r["verbs"]) for r in role["rules"]}
    assert rules == {
        (("",), ("pods",)): sorted(["create", "get", "list", "watch", "delete", "patch"]),
        (("",), ("pods/log",)): ["get"],
        (("",), ("pods/exec",)): sorted(["create", "get"]),
        (("",), ("events",)): sorted(["get", "list", "watch"]),
    }
    (binding,) = by_kind(docs, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": f"{RELEASE}-airflow-worker", "namespace": NAMESPACE}
    ]
    one(docs, "ServiceAccount", f"{RELEASE}-airflow-worker")
    steps = one(docs, "ServiceAccount", f"{RELEASE}-steps")
    assert steps["automountServiceAccountToken"] is False


def test_worker_service_account_names_must_agree() -> None:
    values = merged(
        values_file("values-embedded.yaml"), {"rbac": {"workerServiceAccount": {"name": "other"}}}
    )
    with pytest.raises(
        helm_python.HelmError,
        match=r"rbac\.workerServiceAccount\.name .* airflow\.workers\.serviceAccount\.name .* differ",
    ):
        render(values)


def test_autoscaling_targets_the_model_server(rollout: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = rollout
    (hpa,) = by_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": f"{RELEASE}-model-server",
    }
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    bounds = {"values-embedded.yaml": (1, 2), "values-production.yaml": (2, 10)}[name]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == bounds


def test_production_pdb_targets_the_model_server() -> None:
    docs = render("values-production.yaml")
    (pdb,) = by_kind(docs, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1" and pdb["spec"]["minAvailable"] == 1
    template_labels = one(docs, "Deployment", f"{RELEASE}-model-server")["spec"]["template"]["metadata"][
        "labels"
    ]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= template_labels.items()


# --- wiring ---------------------------------------------------------------------------------


def execution_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return yaml.safe_load(one(docs, "ConfigMap", f"{RELEASE}-execution")["data"]["execution.yaml"])


def cpu(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def memory(quantity: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    return float(quantity[:-2]) * units[quantity[-2:]] if quantity[-2:] in units else float(quantity)


def test_execution_config(rollout: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = rollout
    config = execution_config(docs)
    assert config["mode"] == "kubernetes"
    assert config["image"] == "mlops-step:0.1.0"
    assert config["env"]["MLFLOW_TRACKING_URI"] == f"http://{RELEASE}-mlflow:5000"
    k8s = config["kubernetes"]
    steps_namespace = "mlops-steps" if name == "values-production.yaml" else NAMESPACE
    assert (k8s["namespace"], k8s["service_account"]) == (steps_namespace, f"{RELEASE}-steps")
    default, train = config["resources"]["default"], config["resources"]["train"]
    for kind in ("requests", "limits"):
        assert cpu(train[kind]["cpu"]) > cpu(default[kind]["cpu"])
        assert memory(train[kind]["memory"]) > memory(default[kind]["memory"])
    if name == "values-embedded.yaml":
        assert config["env"]["MLOPS_ARTIFACT_ROOT"] == "/mlops/artifacts"
        assert k8s["volume_mounts"] == [{"name": "shared-store", "mountPath": "/mlops"}]
        assert k8s["volumes"][0]["persistentVolumeClaim"]["claimName"] == f"{RELEASE}-shared-store"
    else:
        assert config["env"]["MLOPS_ARTIFACT_ROOT"] == "s3://mlops-artifacts/artifacts"
        assert k8s["env_from"] == [{"secretRef": {"name": "mlops-stores"}}]
        assert k8s["volumes"] == []


def test_execution_config_is_read_by_the_step_task_factory(tmp_path: Path) -> None:
    """Contract with mlops_airflow/execution.py (strict model: unknown keys are errors)."""
    execution = pytest.importorskip("mlops_airflow.execution")
    values = merged(values_file("values-production.yaml"), {"imagePullSecrets": [{"name": "registry"}]})
    path = tmp_path / "execution.yaml"
    path.write_text(one(render(values), "ConfigMap", f"{RELEASE}-execution")["data"]["execution.yaml"])
    config = execution.load_execution({"MLOPS_EXECUTION_CONFIG": str(path)})
    assert config.mode == "kubernetes"
    assert config.kubernetes.service_account == f"{RELEASE}-steps"
    assert config.kubernetes.image_pull_secrets == ["registry"]
    assert config.resources_for("train")["limits"]["memory"] == "6Gi"


def test_embedded_shares_one_volume_and_database() -> None:
    docs = render("values-embedded.yaml")
    claim = one(docs, "PersistentVolumeClaim", f"{RELEASE}-shared-store")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    for deployment in ("mlflow", "model-server"):
        spec = one(docs, "Deployment", f"{RELEASE}-{deployment}")["spec"]["template"]["spec"]
        assert {"name": "shared-store", "mountPath": "/mlops"} in spec["containers"][0]["volumeMounts"]
    postgres = one(docs, "StatefulSet", f"{RELEASE}-postgresql")
    assert postgres["spec"]["replicas"] == 1
    assert postgres["spec"]["template"]["spec"]["containers"][0]["image"] == "postgres:17"
    one(docs, "Service", f"{RELEASE}-postgresql")
    container = one(docs, "Deployment", f"{RELEASE}-mlflow")["spec"]["template"]["spec"]["containers"][0]
    mlflow = mlflow_argv(container)
    assert mlflow[mlflow.index("--artifacts-destination") + 1] == "/mlops/mlflow"


def mlflow_argv(container: dict[str, Any]) -> list[str]:
    """``mlflow server``'s arguments, whether run directly or from the auth wrapper's ``exec`` line."""
    command = container["command"]
    if command[:2] != ["sh", "-c"]:
        return command
    (line,) = [line for line in command[2].splitlines() if line.strip().startswith("exec ")]
    return shlex.split(line)[1:]


def test_mlflow_server_and_db_upgrade(rollout: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = rollout
    container = one(docs, "Deployment", f"{RELEASE}-mlflow")["spec"]["template"]["spec"]["containers"][0]
    command = mlflow_argv(container)
    assert command[:2] == ["mlflow", "server"] and "--serve-artifacts" in command
    assert command[-2:] == ["--app-name", "basic-auth"]  # auth is on in both rollouts
    # the URI (with its password) reaches MLflow through its environment, never the command line
    assert "--backend-store-uri" not in command and "MLFLOW_BACKEND_STORE_URI" not in " ".join(command)
    backend = next(e for e in container["env"] if e["name"] == "MLFLOW_BACKEND_STORE_URI")
    secret = "mlops-mlflow-db" if name == "values-production.yaml" else f"{RELEASE}-mlflow-backend"
    assert backend["valueFrom"]["secretKeyRef"] == {"name": secret, "key": "backend-store-uri"}
    if name == "values-production.yaml":
        assert command[command.index("--artifacts-destination") + 1] == "s3://mlops-artifacts/mlflow"
    job = one(docs, "Job", f"{RELEASE}-mlflow-db-upgrade")
    assert "pre-upgrade" in job["metadata"]["annotations"]["helm.sh/hook"]
    upgrade = job["spec"]["template"]["spec"]["containers"][0]
    # the URI reaches the upgrade through its environment too (run for real in test_chart_mlflow_auth)
    assert upgrade["command"][:2] == ["python", "-c"] and "mlflow.db.upgrade" in upgrade["command"][2]
    assert not any("$(" in part for part in upgrade["command"])
    backend = next(e for e in upgrade["env"] if e["name"] == "MLFLOW_BACKEND_STORE_URI")
    assert backend["valueFrom"]["secretKeyRef"] == {"name": secret, "key": "backend-store-uri"}
    assert one(docs, "Service", f"{RELEASE}-mlflow")["spec"]["ports"][0]["port"] == 5000


def test_the_charts_mlflow_auth_config_is_the_local_stacks(rollout, tmp_path) -> None:
    """The chart's shell prelude, run for real, writes the ini ``registry_auth`` writes for the
    local stack (one source of behaviour: the credential cache included, whose absence made
    every MLflow request pay a scrypt check; the production training task took 38 s, not ~10)."""
    import subprocess

    from pipelines import registry_auth

    _, docs = rollout
    container = one(docs, "Deployment", f"{RELEASE}-mlflow")["spec"]["template"]["spec"]["containers"][0]
    prelude = "\n".join(
        line for line in container["command"][2].splitlines() if not line.strip().startswith("exec ")
    )
    chart_ini, database = tmp_path / "chart.ini", "postgresql://u:p%40ss@db/mlflow"
    env = {
        "PATH": "/usr/bin:/bin",
        "MLFLOW_BACKEND_STORE_URI": database,
        "MLFLOW_AUTH_CONFIG_PATH": str(chart_ini),
    }
    subprocess.run(["sh", "-c", prelude], env=env, check=True, timeout=30)
    secrets = {name: "x" * 12 for name in registry_auth.SECRETS}
    registry_auth.server_env(
        tmp_path / "local", {registry_auth.AUTH_ENV: "basic", "MLFLOW_AUTH_DB": database, **secrets}
    )
    assert chart_ini.read_text() == (tmp_path / "local" / "mlflow-auth.ini").read_text()
    assert f"auth_cache_ttl_seconds = {registry_auth.AUTH_CACHE_SECONDS}" in chart_ini.read_text()


# --- monitoring -----------------------------------------------------------------------------


def shipped(name: str) -> dict[str, Any]:
    return yaml.safe_load((CHART / "files" / "monitoring" / name).read_text())


def test_monitoring_config(rollout: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rollout
    prometheus = one(docs, "ConfigMap", f"{RELEASE}-prometheus")["data"]
    assert yaml.safe_load(prometheus["prometheus-rules.yaml"]) == shipped("prometheus-rules.yaml")
    (job,) = yaml.safe_load(prometheus["prometheus.yaml"])["scrape_configs"]
    # every pod of this release's model server, not the Service (which mixes the pods' series)
    assert job["kubernetes_sd_configs"] == [{"role": "pod", "namespaces": {"names": [NAMESPACE]}}]
    keep = job["relabel_configs"][0]
    assert keep["action"] == "keep" and keep["regex"] == f"{RELEASE};model-server;true;http"
    assert {"source_labels": ["__meta_kubernetes_pod_label_mlops_io_model"], "target_label": "model"} in (
        job["relabel_configs"]
    )
    assert job["authorization"]["credentials_file"].endswith("serving-admin-token")
    assert job["honor_labels"] is True  # a catalogue server's own model label wins over the pod's
    pod = one(docs, "Deployment", f"{RELEASE}-model-server")["spec"]["template"]["metadata"]
    assert pod["labels"]["mlops.io/model"] == "flights-delay"
    alertmanager = yaml.safe_load(
        one(docs, "ConfigMap", f"{RELEASE}-alertmanager")["data"]["alertmanager.yaml"]
    )
    (receiver,) = [r for r in alertmanager["receivers"] if r["name"] == "airflow-retrain"]
    assert receiver["webhook_configs"][0]["url"] == f"http://{RELEASE}-api-server:8080/mlops/alerts"
    # Everything but the URL is the shipped file.
    expected = shipped("alertmanager.yaml")
    expected["receivers"][1]["webhook_configs"][0]["url"] = receiver["webhook_configs"][0]["url"]
    assert alertmanager == expected


def test_serving_auth_is_on_by_default_with_four_keys() -> None:
    assert values_file("values.yaml")["serving"]["auth"]["enabled"] is True
    docs = render("values-embedded.yaml")
    secret = one(docs, "Secret", f"{RELEASE}-serving-token")
    assert set(secret["stringData"]) == {"token", "feedback-token", "admin-token", "secret"}
    assert len(set(secret["stringData"].values())) == 4


def test_alert_token_secret() -> None:
    docs = render("values-embedded.yaml")
    secret = one(docs, "Secret", f"{RELEASE}-alert-token")
    assert secret["stringData"] == {"token": "embedded-dev-alert-token"}
    # production brings its own Secret
    assert not [
        d
        for d in by_kind(render("values-production.yaml"), "Secret")
        if d["metadata"]["name"].endswith("alert-token")
    ]


def resource_rules(steps_namespace: str) -> dict[str, Any]:
    """The shipped resource rules as the chart fills them in for this release."""
    text = (CHART / "files" / "monitoring" / "resource-rules.yaml").read_text()
    return yaml.safe_load(
        text.replace("RELEASE_NAMESPACE", NAMESPACE).replace("STEPS_NAMESPACE", steps_namespace)
    )


def test_production_prometheus_rule_carries_the_shipped_groups() -> None:
    (rule,) = by_kind(render("values-production.yaml"), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    drift, resources = shipped("prometheus-rules.yaml")["groups"], resource_rules("mlops-steps")["groups"]
    assert rule["spec"]["groups"] == drift + resources
    (memory,) = [r for r in rule["spec"]["groups"][-1]["rules"] if r["alert"] == "MemoryNearLimit"]
    assert f'namespace=~"{NAMESPACE}|mlops-steps"' in memory["expr"]  # the release's and the steps'


def test_the_monitoring_config_carries_the_resource_rules(rollout: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = rollout
    prometheus = one(docs, "ConfigMap", f"{RELEASE}-prometheus")["data"]
    steps = values_file(name).get("steps", {}).get("namespace") or NAMESPACE
    assert yaml.safe_load(prometheus["resource-rules.yaml"]) == resource_rules(steps)
    assert "RELEASE_NAMESPACE" not in prometheus["resource-rules.yaml"]
    rule_files = yaml.safe_load(prometheus["prometheus.yaml"])["rule_files"]
    assert rule_files == ["prometheus-rules.yaml", "resource-rules.yaml"]
    assert set(rule_files) < set(prometheus)  # every file Prometheus loads is in the ConfigMap


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [(panel["title"], t["expr"]) for panel in dashboard["panels"] for t in panel["targets"]]


def test_the_grafana_dashboard_ships_for_the_sidecar_and_queries_real_metrics(tmp_path: Path) -> None:
    """Every query of the dashboard parses as PromQL (promtool, as recording rules) and names only
    metrics the model server exports: a renamed metric would leave an empty panel, not an error."""
    import shutil
    import subprocess

    from pipelines.serving.metrics import ServerMetrics

    docs = render("values-embedded.yaml")
    config_map = one(docs, "ConfigMap", f"{RELEASE}-grafana-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["mlops-model-servers.json"])
    assert dashboard == json.loads((CHART / "files" / "monitoring" / "grafana-dashboard.json").read_text())
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("requests", "latency", "errors", "drift", "serving"):
        assert topic in titles, topic
    queries = dashboard_queries(dashboard)
    exported = {m.name for m in ServerMetrics().registry.collect()}
    suffixes = ("_total", "_bucket", "_sum", "_count", "_created")
    for title, expr in queries:
        for metric in re.findall(r"\b(mlops_[a-z_]+)", expr):
            base = next((metric[: -len(s)] for s in suffixes if metric.endswith(s)), metric)
            assert metric in exported or base in exported, (title, metric)
    recorded = [{"record": f"dashboard:query_{i}", "expr": expr} for i, (_, expr) in enumerate(queries)]
    rules = {"groups": [{"name": "dashboard", "rules": recorded}]}
    (tmp_path / "queries.yaml").write_text(yaml.safe_dump(rules))
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make test` installs Debian's prometheus"
    done = subprocess.run(
        [promtool, "check", "rules", "queries.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0 and f"SUCCESS: {len(queries)} rules found" in done.stdout, (
        done.stdout + done.stderr
    )
    # and off, with labels of the user's Grafana
    off = render(
        merged(values_file("values-embedded.yaml"), {"monitoring": {"grafanaDashboard": {"enabled": False}}})
    )
    assert not [d for d in off if d["metadata"]["name"].endswith("grafana-dashboard")]
    theirs = {"labels": {"dashboards": "mlops"}, "folder": "ML"}
    other = merged(values_file("values-embedded.yaml"), {"monitoring": {"grafanaDashboard": theirs}})
    meta = one(render(other), "ConfigMap", f"{RELEASE}-grafana-dashboard")["metadata"]
    assert meta["labels"]["dashboards"] == "mlops" and meta["annotations"] == {"grafana_folder": "ML"}


# --- broken values fail with a message naming the key ---------------------------------------


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"serving": {"replicas": 0}}, "serving.replicas"),
        ({"serving": {"autoscaling": {"minReplicas": 0}}}, "serving.autoscaling.minReplicas"),
        ({"serving": {"autoscaling": {"maxReplicas": "ten"}}}, "serving.autoscaling.maxReplicas"),
        ({"steps": {"executionMode": "ssh"}}, "steps.executionMode"),
        (
            {"steps": {"resources": {"train": {"requests": {"cpu": "two"}}}}},
            "steps.resources.train.requests.cpu",
        ),
        ({"serving": {"resources": {"limits": {"memory": "lots"}}}}, "serving.resources.limits.memory"),
        ({"mlflow": {"port": "http"}}, "mlflow.port"),
    ],
)
def test_schema_rejects_broken_values(override: dict[str, Any], key: str) -> None:
    values = merged(values_file("values-embedded.yaml"), override)
    chart = helm_python.Chart.load(str(CHART))
    with pytest.raises(helm_python.HelmValuesError) as err:
        chart.validate_schema(values)
    path = key.replace(".", "/")
    assert key in str(err.value) or path in str(err.value), str(err.value)
    with pytest.raises(helm_python.HelmError):
        render(values)
    result = helm_python.lint(str(CHART), values, strict=False, kube_version=KUBE_VERSION)
    errors = [m["error"] for m in result["messages"] if m["severity"] == 3]
    assert errors and all(f"/{path}" in e for e in errors), result  # lint names the key too


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            {"stores": {"s3": {"bucket": ""}}},
            "stores.s3.bucket is required when sharedStore.enabled is false",
        ),
        (
            {"monitoring": {"alertToken": {"existingSecret": ""}}},
            "monitoring.alertToken.value or monitoring.alertToken.existingSecret is required",
        ),
        (
            {"serving": {"auth": {"existingSecret": ""}}},
            "serving.auth.token is required when serving.auth.enabled is true",
        ),
        (
            {"serving": {"auth": {"existingSecret": "", "token": "p", "feedbackToken": "f"}}},
            "serving.auth.adminToken is required when serving.auth.enabled is true",
        ),
        (
            {
                "serving": {
                    "auth": {
                        "existingSecret": "",
                        **{"token": "same", "feedbackToken": "same", "adminToken": "a"},
                        "secret": "s" * 16,
                    }
                }
            },
            "serving.auth.token, feedbackToken and adminToken must differ",
        ),
        (
            {
                "serving": {
                    "auth": {
                        "existingSecret": "",
                        **{"token": "p", "feedbackToken": "f", "adminToken": "a"},
                        "secret": "short",
                    }
                }
            },
            "serving.auth.secret is too short",
        ),
        (
            {"mlflow": {"backendStore": {"existingSecret": ""}}},
            "mlflow.backendStore.existingSecret or mlflow.backendStore.uri is required",
        ),
        (
            {"serving": {"autoscaling": {"minReplicas": 5, "maxReplicas": 3}}},
            "serving.autoscaling.maxReplicas must be >=",
        ),
    ],
)
def test_production_requires_its_settings(override: dict[str, Any], message: str) -> None:
    values = merged(values_file("values-production.yaml"), override)
    with pytest.raises(helm_python.HelmError) as err:
        render(values)
    assert message in str(err.value)


def test_the_rules_name_no_model_and_aggregate_pods() -> None:
    """One rule file serves every model: the model label comes from the scrape, and every ratio
    divides sums over all pods (a per-pod ratio, or a Service scrape, mixes replicas)."""
    for group in shipped("prometheus-rules.yaml")["groups"]:
        for rule in group["rules"]:
            assert "model" not in rule["labels"], rule["alert"]
            expr = rule["expr"]
            assert "flights-delay" not in expr
            pooled = ("sum by (model, feature) (increase(",)
            counters = (
                r"mlops_feature_(value_count_total|value_\w+_sum_total|unseen_category_total|value_sum\b)"
            )
            uses = list(re.finditer(counters, expr))
            assert uses, rule["alert"]
            for use in uses:
                assert expr[: use.start()].endswith(pooled), (rule["alert"], use.group())
    alertmanager = shipped("alertmanager.yaml")
    assert alertmanager["route"]["group_by"] == ["model"]


def test_production_pod_monitor_and_prometheus_discovery_role() -> None:
    docs = render("values-production.yaml")
    (monitor,) = by_kind(docs, "PodMonitor")
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["authorization"]["credentials"] == {"name": "mlops-serving-token", "key": "admin-token"}
    assert {"sourceLabels": ["__meta_kubernetes_pod_label_mlops_io_model"], "targetLabel": "model"} in (
        endpoint["relabelings"]
    )
    assert endpoint["honorLabels"] is True  # a catalogue server's own model label wins over the pod's
    assert not [r for r in by_kind(docs, "Role") if "prometheus" in r["metadata"]["name"]]
    values = merged(
        values_file("values-production.yaml"),
        {"monitoring": {"prometheusServiceAccount": {"name": "prometheus", "namespace": "monitoring"}}},
    )
    docs = render(values)
    role = one(docs, "Role", f"{RELEASE}-prometheus-discovery")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    binding = one(docs, "RoleBinding", f"{RELEASE}-prometheus-discovery")
    subject = {"kind": "ServiceAccount", "name": "prometheus", "namespace": "monitoring"}
    assert binding["subjects"] == [subject]


def test_step_timeouts_reach_the_execution_config() -> None:
    values = merged(values_file("values-production.yaml"), {"steps": {"timeoutMinutes": {"default": 20}}})
    assert execution_config(render(values))["timeout_minutes"] == {"default": 20}
    assert execution_config(render("values-production.yaml"))["timeout_minutes"] == {}


# --- MLflow auth and network policies --------------------------------------------------------


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_each_process_gets_its_own_mlflow_user(rollout: tuple[str, list[dict[str, Any]]]) -> None:
    """The model server reads as `server`, steps write as `pipeline`, only MLflow and the users Job
    see the admin's password; the Secret's keys are read one by one, never mounted whole."""
    name, docs = rollout
    secret = "mlops-mlflow-auth" if name == "values-production.yaml" else f"{RELEASE}-mlflow-auth"

    def key(k: str) -> dict[str, Any]:
        return {"secretKeyRef": {"name": secret, "key": k}}

    server = one(docs, "Deployment", f"{RELEASE}-model-server")["spec"]["template"]["spec"]["containers"][0]
    assert env_of(server)["MLFLOW_TRACKING_USERNAME"] == "server"
    assert env_of(server)["MLFLOW_TRACKING_PASSWORD"] == key("server-password")
    mlflow = one(docs, "Deployment", f"{RELEASE}-mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert env_of(mlflow)["MLFLOW_AUTH_ADMIN_PASSWORD"] == key("admin-password")
    assert env_of(mlflow)["MLFLOW_FLASK_SERVER_SECRET_KEY"] == key("flask-secret-key")
    users = one(docs, "Job", f"{RELEASE}-mlflow-users")
    assert "post-upgrade" in users["metadata"]["annotations"]["helm.sh/hook"]
    job = users["spec"]["template"]["spec"]["containers"][0]
    assert job["command"][:4] == ["python", "-m", "pipelines.registry_auth", "ensure-users"]
    assert job["command"][job["command"].index("--url") + 1] == f"http://{RELEASE}-mlflow:5000"
    assert job["command"][job["command"].index("--model") + 1] == "flights-delay"  # the served name, claimed
    assert {n: v for n, v in env_of(job).items() if n != "HOME"} == {
        "MLFLOW_AUTH_ADMIN_PASSWORD": key("admin-password"),
        "MLOPS_MLFLOW_PIPELINE_PASSWORD": key("pipeline-password"),
        "MLOPS_MLFLOW_SERVER_PASSWORD": key("server-password"),
    }
    steps = execution_config(docs)
    assert steps["env"]["MLFLOW_TRACKING_USERNAME"] == "pipeline"
    assert steps["kubernetes"]["env_secrets"] == {
        "MLFLOW_TRACKING_PASSWORD": {"name": secret, "key": "pipeline-password"}
    }
    for spec in pod_specs(docs).values():  # no container takes the auth Secret whole
        for container in spec["containers"]:
            refs = [e.get("secretRef", {}).get("name") for e in container.get("envFrom", [])]
            assert secret not in refs, container["name"]
    airflow_env = yaml.safe_load(
        values_file("values.yaml")["airflow"]["extraEnv"].replace("{{ .Release.Name }}", RELEASE)
    )
    password = next(e for e in airflow_env if e["name"] == "MLFLOW_TRACKING_PASSWORD")
    assert password["valueFrom"]["secretKeyRef"]["key"] == "pipeline-password"


def test_mlflow_auth_off_renders_plain_mlflow() -> None:
    values = merged(values_file("values-embedded.yaml"), {"mlflow": {"auth": {"enabled": False}}})
    docs = render(values)
    mlflow = one(docs, "Deployment", f"{RELEASE}-mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert mlflow["command"][:2] == ["mlflow", "server"] and "--app-name" not in mlflow["command"]
    assert not [d for d in by_kind(docs, "Job") if d["metadata"]["name"].endswith("-users")]
    assert "MLFLOW_TRACKING_USERNAME" not in execution_config(docs)["env"]


def test_network_policies_admit_only_the_pipeline_and_the_listed_peers() -> None:
    docs = render("values-embedded.yaml")
    mlflow = one(docs, "NetworkPolicy", f"{RELEASE}-mlflow")["spec"]
    assert mlflow["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "mlflow"
    (rule,) = mlflow["ingress"]
    release, steps, airflow = rule["from"][:3]
    assert release["podSelector"]["matchLabels"] == {"app.kubernetes.io/instance": RELEASE}
    assert release["podSelector"]["matchExpressions"][0]["values"] == [
        "model-server",
        "mlflow-users",
        "smoke-test",
    ]
    assert airflow["podSelector"]["matchLabels"] == {"release": RELEASE, "tier": "airflow"}
    # the step pods, in their namespace
    assert steps["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": NAMESPACE}
    assert steps["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "step"
    # step pods carry the labels the policy selects
    assert execution_config(docs)["kubernetes"]["labels"] == {
        "app.kubernetes.io/instance": RELEASE,
        "app.kubernetes.io/component": "step",
    }
    serving = one(docs, "NetworkPolicy", f"{RELEASE}-model-server")["spec"]
    listed, smoke = serving["ingress"]
    assert listed["from"] == values_file("values.yaml")["networkPolicy"]["servingFrom"]
    smoke_pod = {"app.kubernetes.io/instance": RELEASE, "app.kubernetes.io/component": "smoke-test"}
    assert smoke["from"] == [{"podSelector": {"matchLabels": smoke_pod}}]  # `helm test`, nothing else
    assert "smoke-test" in release["podSelector"]["matchExpressions"][0]["values"]
    one(docs, "NetworkPolicy", f"{RELEASE}-postgresql")
    closed = render(merged(values_file("values-embedded.yaml"), {"networkPolicy": {"servingFrom": []}}))
    assert one(closed, "NetworkPolicy", f"{RELEASE}-model-server")["spec"]["ingress"] == [smoke]
    shut = {"networkPolicy": {"servingFrom": []}, "smokeTest": {"enabled": False}}
    closed = render(merged(values_file("values-embedded.yaml"), shut))
    assert one(closed, "NetworkPolicy", f"{RELEASE}-model-server")["spec"]["ingress"] == []
    off = render(merged(values_file("values-embedded.yaml"), {"networkPolicy": {"enabled": False}}))
    assert not by_kind(off, "NetworkPolicy")


def test_acknowledged_predictions_outlive_the_pod() -> None:
    """Embedded (shared volume): the spool is on it, so a pod deleted without its grace period loses
    no acknowledged prediction; every rollout waits longer than the server's shutdown."""
    embedded = one(render("values-embedded.yaml"), "Deployment", f"{RELEASE}-model-server")["spec"][
        "template"
    ]
    assert env_of(embedded["spec"]["containers"][0])["MLOPS_PREDICTION_SPOOL"] == "/mlops/prediction-spool"
    assert embedded["spec"]["terminationGracePeriodSeconds"] >= 30
    production = one(render("values-production.yaml"), "Deployment", f"{RELEASE}-model-server")
    env = env_of(production["spec"]["template"]["spec"]["containers"][0])
    assert "MLOPS_PREDICTION_SPOOL" not in env and "secretKeyRef" in env["MLOPS_PREDICTION_LOG"]  # PostgreSQL


def test_production_step_pods_run_in_their_own_restricted_namespace() -> None:
    """The workers' pod rights (create, exec) reach only the steps' namespace; the steps read only
    the Secrets that exist there; Pod Security "restricted" is enforced on it."""
    docs = render("values-production.yaml")
    namespace = one(docs, "Namespace", "mlops-steps")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    (role,) = by_kind(docs, "Role")
    (binding,) = [b for b in by_kind(docs, "RoleBinding") if b["roleRef"]["name"] == role["metadata"]["name"]]
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "mlops-steps"
    assert binding["subjects"][0]["namespace"] == NAMESPACE  # the workers stay in the release's
    assert one(docs, "ServiceAccount", f"{RELEASE}-steps")["metadata"]["namespace"] == "mlops-steps"
    assert execution_config(docs)["kubernetes"]["namespace"] == "mlops-steps"
    mlflow = one(docs, "NetworkPolicy", f"{RELEASE}-mlflow")["spec"]["ingress"][0]["from"]
    assert {"kubernetes.io/metadata.name": "mlops-steps"} in [
        p.get("namespaceSelector", {}).get("matchLabels") for p in mlflow
    ]


def test_chart_made_secrets_are_copied_to_the_steps_namespace_without_the_admin_password() -> None:
    values = merged(
        values_file("values-production.yaml"),
        {
            "mlflow": {"auth": {"existingSecret": "", "adminPassword": "adm", "pipelinePassword": "pipe",
                                "serverPassword": "srv", "flaskSecretKey": "k"}},
            "stores": {"existingSecret": "", "s3": {"accessKeyId": "id", "secretAccessKey": "key"}},
        },
    )  # fmt: skip
    secrets = {
        (d["metadata"]["name"], d["metadata"].get("namespace")): d for d in by_kind(render(values), "Secret")
    }
    assert secrets[(f"{RELEASE}-mlflow-auth", "mlops-steps")]["stringData"] == {"pipeline-password": "pipe"}
    assert "admin-password" in secrets[(f"{RELEASE}-mlflow-auth", None)]["stringData"]
    stores = [k for k in secrets if k[0] == f"{RELEASE}-stores"]
    assert sorted(stores, key=str) == sorted(
        [(f"{RELEASE}-stores", NAMESPACE), (f"{RELEASE}-stores", "mlops-steps")], key=str
    )


def test_a_steps_namespace_needs_s3() -> None:
    values = merged(values_file("values-embedded.yaml"), {"steps": {"namespace": "elsewhere"}})
    with pytest.raises(
        helm_python.HelmError, match="a PersistentVolumeClaim cannot be mounted from another namespace"
    ):
        render(values)


def test_the_embedded_database_password_is_the_same_on_every_render() -> None:
    """Regression: a lookup-generated password changed on every `helm template` (Argo CD, CI
    diffs) while the database kept its first one."""

    def password() -> str:
        docs = render("values-embedded.yaml")
        return one(docs, "Secret", f"{RELEASE}-postgresql")["stringData"]["password"]

    assert password() == password() == "embedded-dev-postgres-password"
    values = merged(values_file("values-embedded.yaml"), {"postgresql": {"auth": {"password": ""}}})
    needed = r"postgresql\.auth\.password or postgresql\.auth\.existingSecret is required"
    with pytest.raises(helm_python.HelmError, match=needed):
        render(values)
