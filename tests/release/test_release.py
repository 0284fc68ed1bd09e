"""The release workflow (.github/workflows/release.yml) and its script (.ci/release).

The workflow is validated against GitHub's workflow schema (check-jsonschema's vendored copy, offline)
and checked for what it must do. The script runs for real with --chart-only (no image build: the image
path is what tests/containers covers): the chart is packaged with the Helm engine, its dependencies
are fetched from a chart repository served on loopback, and broken charts fail with the problem named.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import subprocess
import sys
import tarfile
import threading
import tomllib
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "release.yml"
SCRIPT = ROOT / ".ci" / "release"
CHART = ROOT / "helm" / "mlops"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def run_release(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`.ci/release ARGS` under this interpreter (the project's .venv)."""
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def archive_yaml(archive: Path, member: str) -> dict[str, Any]:
    with tarfile.open(archive) as tar:
        return yaml.safe_load(tar.extractfile(member).read())


# --- the workflow ---------------------------------------------------------------------------


def workflow() -> dict[str, Any]:
    return yaml.safe_load(WORKFLOW.read_text())


def check_workflow_schema(path: Path) -> tuple[int, dict[str, Any]]:
    """check-jsonschema's CLI (its documented interface) with the GitHub workflow schema it vendors."""
    pytest.importorskip("check_jsonschema", reason="check-jsonschema is not installed (the dev extra)")
    command = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows"]
    command += ["--output-format", "json", str(path)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=60)
    return proc.returncode, json.loads(proc.stdout)


def test_workflow_validates_against_githubs_schema() -> None:
    code, report = check_workflow_schema(WORKFLOW)
    assert (code, report["status"]) == (0, "ok"), report


def test_the_schema_check_catches_a_broken_workflow(tmp_path: Path) -> None:
    broken = workflow()
    broken["on"] = broken.pop(True)  # PyYAML reads the bare key `on` as True
    del broken["jobs"]["release"]["runs-on"]
    broken["jobs"]["test"]["timeout-minutes"] = "ninety"
    path = tmp_path / "release.yml"
    path.write_text(yaml.safe_dump(broken, sort_keys=False))
    code, report = check_workflow_schema(path)
    assert (code, report["status"]) == (1, "fail"), report
    found = {(e["best_match"]["path"], e["best_match"]["message"]) for e in report["errors"]}
    found |= {(e["best_deep_match"]["path"], e["best_deep_match"]["message"]) for e in report["errors"]}
    assert ("$.jobs.release", "'runs-on' is a required property") in found, found
    assert ("$.jobs.test['timeout-minutes']", "'ninety' is not of type 'number'") in found, found


def steps_running(job: dict[str, Any], command: str) -> list[dict[str, Any]]:
    return [s for s in job["steps"] if command in s.get("run", "")]


def test_workflow_triggers_jobs_and_permissions() -> None:
    wf = workflow()
    on = wf.get("on", wf.get(True))  # PyYAML reads the bare key `on` as True
    assert on["push"]["branches"] == ["main"] and on["push"]["tags"] == ["v*"]
    assert "workflow_dispatch" in on
    assert wf["permissions"] == {"contents": "read"}  # the default for every job
    test, release = wf["jobs"]["test"], wf["jobs"]["release"]

    assert [s["run"].split()[-1] for s in steps_running(test, ".ci/run")] == [".ci/run"]
    assert test["permissions"] == {"contents": "read"}

    assert release["needs"] in ("test", ["test"])
    assert release["permissions"] == {"contents": "write", "packages": "write"}
    (step,) = steps_running(release, ".ci/release")
    command = step["run"].split()
    for option in ("--repository", "--tag", "--push"):
        assert option in command, command
    assert "--skip-tests" not in command and "--chart-only" not in command
    assert "ghcr.io/${OWNER,,}/" in steps_running(release, "GITHUB_OUTPUT")[0]["run"]  # lowercase owner

    uses = {s["uses"].split("@")[0]: s for job in (test, release) for s in job["steps"] if "uses" in s}
    for name, s in uses.items():
        assert s["uses"].split("@")[1].startswith("v"), f"{name} is not pinned to a release"
    assert uses["docker/login-action"]["with"]["password"] == "${{ secrets.GITHUB_TOKEN }}"
    upload = uses["actions/upload-artifact"]["with"]
    assert "dist/*.tgz" in upload["path"] and upload["if-no-files-found"] == "error"
    (attach,) = steps_running(release, "gh release upload")
    assert attach["if"] == "github.ref_type == 'tag'" and "dist/*.tgz" in attach["run"]


def test_deploy_jobs_follow_the_release_and_production_waits_for_staging_and_a_person() -> None:
    jobs = workflow()["jobs"]
    assert jobs["release"]["outputs"]["tag"] == "${{ steps.name.outputs.tag }}"
    staging, production = jobs["deploy-staging"], jobs["deploy-production"]
    assert staging["needs"] in ("release", ["release"]) and staging["environment"] == "staging"
    assert set(production["needs"]) == {"release", "deploy-staging"}
    assert production["environment"] == "production"  # its required reviewers are the approval
    assert staging["if"] == "vars.DEPLOY_ENABLED == 'true'"  # no cluster configured: no deploy
    assert production["if"] == "vars.DEPLOY_ENABLED == 'true' && github.ref_type == 'tag'"
    for job in (staging, production):
        assert job["permissions"] == {"contents": "read"}
        download = next(
            s for s in job["steps"] if s.get("uses", "").startswith("actions/download-artifact@v")
        )
        assert download["with"]["name"] == "release-${{ needs.release.outputs.tag }}"
        (deploy,) = steps_running(job, ".ci/deploy")
        assert "--chart dist/*.tgz" in deploy["run"] and "--namespace" in deploy["run"]
        assert "${{ secrets.KUBECONFIG }}" in str(job["steps"])  # the environment's, not the repository's


FAKE_HELM = """#!/usr/bin/env bash
# The helm CLI's stand-in: no cluster and no helm binary run on this machine. It records each call
# and answers as helm would for the case the test sets (HELM_HISTORY, HELM_TEST_EXIT).
echo "$*" >> "$HELM_CALLS"
case "$1" in
  history)
    [ -n "${HELM_HISTORY:-}" ] || { echo "Error: release: not found" >&2; exit 1; }
    echo "$HELM_HISTORY" ;;
  test) exit "${HELM_TEST_EXIT:-0}" ;;
esac
"""


def run_deploy(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """`.ci/deploy ARGS` with a recording helm first on PATH: the result and the helm calls made."""
    import os

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "helm").write_text(FAKE_HELM)
    (bin_dir / "helm").chmod(0o755)
    calls = tmp_path / "calls"
    calls.write_text("")
    environment = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "HELM_CALLS": str(calls), **env}
    proc = subprocess.run(
        [str(ROOT / ".ci" / "deploy"), *args],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc, calls.read_text().splitlines()


def test_deploy_script_upgrades_tests_and_rolls_back_a_failed_smoke_test(tmp_path: Path) -> None:
    """The command sequence of .ci/deploy; what helm and the cluster then do is not run here."""
    chart = tmp_path / "mlops-1.2.3.tgz"
    chart.write_bytes(b"")
    values = str(CHART / "values-production.yaml")
    args = ("--chart", str(chart), "--namespace", "mlops-staging", "--values", values)

    done, calls = run_deploy(tmp_path, *args, HELM_HISTORY='[{"revision": 3}]')
    assert done.returncode == 0, done.stderr
    assert [c.split()[0] for c in calls] == ["history", "upgrade", "test"]
    upgrade = calls[1].split()
    assert upgrade[:4] == ["upgrade", "--install", "mlops", str(chart)]
    for flag in ("--atomic", "--wait", "--create-namespace"):
        assert flag in upgrade
    assert upgrade[upgrade.index("--values") + 1] == values and "mlops-staging" in upgrade
    assert "passed its smoke test" in done.stderr

    done, calls = run_deploy(tmp_path, *args, HELM_HISTORY='[{"revision": 3}]', HELM_TEST_EXIT="1")
    assert done.returncode == 1 and "rolling mlops back to revision 3" in done.stderr
    assert calls[-1].split()[:3] == ["rollback", "mlops", "3"]

    done, calls = run_deploy(tmp_path, *args, HELM_TEST_EXIT="1")  # a first install: nothing before it
    assert done.returncode == 1 and "first install" in done.stderr
    assert [c.split()[0] for c in calls] == ["history", "upgrade", "test"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "--chart is required"),
        (("--chart", "/nonexistent.tgz", "--namespace", "x"), "'/nonexistent.tgz' does not exist"),
        (("--chart", str(CHART / "Chart.yaml")), "--namespace is required"),
        (
            ("--chart", str(CHART / "Chart.yaml"), "--namespace", "x", "--values", "nope.yaml"),
            "'nope.yaml' is not a file",
        ),
        (("--wat",), "unknown argument '--wat'"),
    ],
)
def test_deploy_script_refuses_bad_arguments_before_calling_helm(tmp_path: Path, args, message: str) -> None:
    done, calls = run_deploy(tmp_path, *args)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert calls == []


# --- the script: options --------------------------------------------------------------------


def test_script_is_executable_and_prints_help() -> None:
    # through its shebang: the system's python3 hands over to .venv
    proc = subprocess.run([str(SCRIPT), "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for option in ("--tag", "--repository", "--push", "--skip-tests", "--chart-only", "--no-chart-deps"):
        assert option in proc.stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--bogus"], 2, "unrecognized arguments: --bogus"),
        (["--push", "--chart-only"], 2, "--push builds nothing to push with --chart-only"),
        (["--push", "--tag", "v1.0.0"], 2, "--push needs --repository"),
        (["--chart-only", "--tag", "bad tag"], 1, "'bad tag' is not a valid image tag"),
        (["--chart-only", "--tag", "v1.0.0", "--repository", "ghcr.io/Acme"], 1, "must be lowercase"),
    ],
)
def test_bad_options_fail_before_anything_is_built(
    tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    proc = run_release(*args, "--dist", str(tmp_path / "dist"))
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr
    assert not (tmp_path / "dist").exists() or not any((tmp_path / "dist").iterdir())


# --- the script: the chart ------------------------------------------------------------------


@pytest.mark.parametrize(("tag", "version"), [("v9.8.7", "9.8.7"), ("sha-0a1b2c3", f"{VERSION}-sha-0a1b2c3")])
def test_chart_is_packaged_with_the_release_versions_and_images(
    tmp_path: Path, tag: str, version: str
) -> None:
    before = tree_digest(CHART)
    dist = tmp_path / "dist"
    proc = run_release(
        "--chart-only", "--skip-tests", "--no-chart-deps", "--tag", tag, "--repository", "ghcr.io/acme",
        "--dist", str(dist),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr

    archive = dist / f"mlops-{version}.tgz"
    assert sorted(p.name for p in dist.iterdir()) == sorted([archive.name, "release.json"])
    chart_yaml = archive_yaml(archive, "mlops/Chart.yaml")
    assert (chart_yaml["version"], chart_yaml["appVersion"]) == (version, tag)
    values = archive_yaml(archive, "mlops/values.yaml")
    assert values["images"]["step"] == {
        "repository": "ghcr.io/acme/mlops-step",
        "tag": "",
        "pullPolicy": "IfNotPresent",
    }
    assert values["images"]["serving"]["repository"] == "ghcr.io/acme/mlops-serving"

    # the archive installs the release's images: render it as Helm will
    with helm_python.Chart.load(str(archive)) as chart:
        rendered = chart.render(
            yaml.safe_load((CHART / "values-embedded.yaml").read_text()), name="mlops", namespace="ml"
        )
    execution = yaml.safe_load(rendered["mlops/templates/execution-configmap.yaml"])
    assert yaml.safe_load(execution["data"]["execution.yaml"])["image"] == f"ghcr.io/acme/mlops-step:{tag}"
    assert f"image: ghcr.io/acme/mlops-serving:{tag}" in rendered["mlops/templates/model-server.yaml"]

    released = json.loads((dist / "release.json").read_text())
    assert json.loads(proc.stdout) == released
    chart = released["chart"]
    assert (chart["version"], chart["appVersion"], chart["name"]) == (version, tag, "mlops")
    assert chart["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert Path(chart["file"]) == archive
    assert chart["linted_with"] == ["values-embedded.yaml", "values-production.yaml"]
    assert chart["dependencies"] == [] and chart["dependencies_declared"] == ["airflow"]
    assert (released["tag"], released["images"], released["tests"], released["pushed"]) == (
        tag,
        [],
        None,
        False,
    )
    assert tree_digest(CHART) == before  # helm/mlops itself is never written to


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def chart_repository(tmp_path: Path) -> Iterator[str]:
    """A chart repository on loopback serving a stand-in for the official Airflow chart (1.22.0)."""
    stand_in, served = tmp_path / "stand-in" / "airflow", tmp_path / "repo"
    stand_in.mkdir(parents=True)
    served.mkdir()
    (stand_in / "Chart.yaml").write_text("apiVersion: v2\nname: airflow\nversion: 1.22.0\n")
    (stand_in / "values.yaml").write_text("{}\n")
    helm_python.package(str(stand_in), destination=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(served)))
    url = f"http://127.0.0.1:{server.server_address[1]}"
    helm_python.repo_index_generate(str(served), base_url=url)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()


def chart_copy(tmp_path: Path, repository: str | None = None) -> Path:
    copy = tmp_path / "chart" / "mlops"
    shutil.copytree(CHART, copy)
    if repository:
        chart_yaml = copy / "Chart.yaml"
        chart_yaml.write_text(chart_yaml.read_text().replace("https://airflow.apache.org", repository))
    return copy


@pytest.mark.parametrize("locked", [False, True], ids=["resolved", "from-Chart.lock"])
def test_dependencies_are_fetched_and_bundled(tmp_path: Path, chart_repository: str, locked: bool) -> None:
    copy = chart_copy(tmp_path, chart_repository)
    if locked:  # a chart that carries its Chart.lock, but not the subcharts
        helm_python.dependency_update(str(copy))
        shutil.rmtree(copy / "charts")
    before = tree_digest(copy)
    dist = tmp_path / "dist"
    proc = run_release(
        "--chart-only", "--skip-tests", "--tag", "v1.0.0", "--chart", str(copy), "--dist", str(dist)
    )
    assert proc.returncode == 0, proc.stderr
    subchart = archive_yaml(dist / "mlops-1.0.0.tgz", "mlops/charts/airflow/Chart.yaml")
    assert (subchart["name"], subchart["version"]) == ("airflow", "1.22.0")
    assert json.loads((dist / "release.json").read_text())["chart"]["dependencies"] == ["airflow"]
    assert ("fetching dependencies airflow (Chart.lock)" in proc.stderr) == locked  # built from the lock
    assert tree_digest(copy) == before  # no charts/ nor Chart.lock left in the source


def test_unreachable_dependencies_fail_and_say_what_to_do(tmp_path: Path) -> None:
    copy = chart_copy(tmp_path, "http://127.0.0.1:9")  # discard port: nothing listens
    dist = tmp_path / "dist"
    proc = run_release(
        "--chart-only", "--skip-tests", "--tag", "v1.0.0", "--chart", str(copy), "--dist", str(dist)
    )
    assert proc.returncode == 1
    assert "fetching the chart's dependencies (airflow) failed" in proc.stderr
    assert "--no-chart-deps" in proc.stderr
    assert not dist.exists() or not any(dist.iterdir())


def break_values(copy: Path) -> None:
    path = copy / "values-embedded.yaml"
    values = yaml.safe_load(path.read_text())
    values["serving"]["replicas"] = 0
    path.write_text(yaml.safe_dump(values))


def break_template(copy: Path) -> None:
    with open(copy / "templates" / "model-server.yaml", "a") as fh:
        fh.write("\n{{ .Values.serving.replicas | nosuchfunction }}\n")


def break_metadata(copy: Path) -> None:
    chart_yaml = copy / "Chart.yaml"
    chart_yaml.write_text(chart_yaml.read_text().replace("name: mlops\n", ""))


@pytest.mark.parametrize(
    ("breakage", "messages"),
    [
        (break_values, ["values-embedded.yaml: error", "'/serving/replicas': minimum: got 0, want 1"]),
        (break_template, ["model-server.yaml", 'function "nosuchfunction" not defined']),
        (break_metadata, ["is not a loadable chart", "name is required"]),
    ],
    ids=["values", "template", "metadata"],
)
def test_a_broken_chart_fails_naming_the_problem(tmp_path: Path, breakage, messages: list[str]) -> None:
    copy = chart_copy(tmp_path)
    breakage(copy)
    dist = tmp_path / "dist"
    proc = run_release(
        "--chart-only", "--skip-tests", "--no-chart-deps", "--tag", "v1.0.0",
        "--chart", str(copy), "--dist", str(dist),
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "release: FAILED:" in proc.stderr
    for message in messages:
        assert message in proc.stderr, proc.stderr
    assert not dist.exists() or not any(dist.iterdir())  # no archive, no release.json
