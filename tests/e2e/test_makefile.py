"""Every ``make`` target the README and the docs name runs as written.

A short target runs for real here; a long one (the 15-minute demo, the benchmarks) runs with
``make --dry-run`` and its command is then started with ``--help``, which proves the entry point
and its options parse. Targets run for real elsewhere are listed with the test that runs them,
and a target the README or a page of ``docs/`` names without an entry here fails the first test.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [
    ROOT / "README.md",
    ROOT / "benchmarks" / "README.md",
    ROOT / "helm" / "mlops" / "README.md",
    *sorted((ROOT / "docs").rglob("*.md")),
]

# target -> where it runs for real ("dry-run" = below, as `make -n` plus `--help`)
COVERED = {
    "test": ".ci/run (CI runs the README's test command)",
    "install": "test_install_and_clean_run_for_real",
    "clean": "test_install_and_clean_run_for_real",
    "train-demo": "test_train_demo_runs_for_real",
    "up": "tests/e2e/test_ui.py (make up, then the browser)",
    "down": "tests/e2e/test_ui.py::test_make_down_stops_every_process",
    "serve": "tests/e2e/test_ui.py::test_make_serve_serves_the_champion",
    "images": "tests/conftest.py::images (the container tests build through `make images`)",
    "lock": "test_lock_runs_for_real",
    "demo": "dry-run (the loop itself: tests/e2e/test_loop.py)",
    "bench": "dry-run",
    "bench-serving": "dry-run",
    "bench-drift": "dry-run",
    "bench-policy": "dry-run (a short replay: tests/unit/test_retrain_policy.py)",
    "help": "test_help_lists_every_target",
    "test-fast": "test_test_fast_selects_the_quick_suites",
    "lint": ".ci/run (make test runs make lint first: ruff and the layering contracts)",
    "k8s-smoke": "needs a cluster: test_k8s_smoke_dry_runs_and_refuses_without_a_cluster",
}
LONG = [target for target, how in COVERED.items() if how.startswith("dry-run")]


def documented_targets() -> set[str]:
    """Every ``make <target>`` in the documents' code (inline spans and fenced blocks)."""
    found: set[str] = set()
    for doc in DOCUMENTS:
        text = doc.read_text()
        code = re.findall(r"```.*?```", text, flags=re.S) + re.findall(r"`[^`\n]+`", text)
        for snippet in code:
            found.update(re.findall(r"(?:^|[\s`;&|(])make ([a-z][a-z0-9-]*)", snippet, flags=re.M))
    return found


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([a-z][a-z0-9-]*):", (ROOT / "Makefile").read_text(), flags=re.M))


def make(*args: str, cwd: Path = ROOT, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    """``make`` as a user runs it; the session's MLflow store is not the user's (``MLOPS_HOME`` decides)."""
    environ = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    # Under `make test` this is a sub-make, which prints "Entering/Leaving directory" by default.
    return subprocess.run(
        ["make", "--no-print-directory", *args], cwd=cwd, env={**environ, **env}, capture_output=True,
        text=True, timeout=timeout,
    )  # fmt: skip


def test_every_target_the_readme_names_exists_and_is_tested_here():
    documented = documented_targets()
    assert {"demo", "test", "up", "images", "train-demo"} <= documented  # the parser finds them
    assert documented <= makefile_targets(), (
        f"README names targets the Makefile lacks: {documented - makefile_targets()}"
    )
    assert documented == set(COVERED), f"add the new target to COVERED: {documented ^ set(COVERED)}"


@pytest.mark.parametrize("target", LONG)
def test_a_long_target_dry_runs_and_its_command_parses(target):
    dry = make("--dry-run", target)
    assert dry.returncode == 0, dry.stderr
    command = shlex.split(dry.stdout.strip().splitlines()[-1])  # the target's own recipe comes last
    assert command[0].endswith("/python") or command[0].endswith("python"), command
    helped = subprocess.run([*command, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0, helped.stderr[-2000:]
    assert "usage:" in helped.stdout


def test_demo_runs_the_loop_that_the_loop_test_drives():
    command = make("--dry-run", "demo").stdout.strip().splitlines()[-1]
    assert command.endswith("-m mlops_demo.loop --fresh"), command
    assert '"-m", "mlops_demo.loop"' in (ROOT / "tests" / "e2e" / "test_loop.py").read_text()


def test_help_lists_every_target():
    """`make help` names every target that has a ``## `` comment in the Makefile."""
    helped = make("-s", "help")
    assert helped.returncode == 0, helped.stderr
    described = re.findall(r"^([a-z][a-z0-9-]*):.*## ", (ROOT / "Makefile").read_text(), flags=re.M)
    assert len(described) > 10, described
    listed = set(re.findall(r"^\s*make ([a-z][a-z0-9-]*)\s", helped.stdout, flags=re.M))
    assert set(described) <= listed, f"missing from `make help`: {set(described) - listed}"


def test_k8s_smoke_dry_runs_and_refuses_without_a_cluster(tmp_path):
    """`make k8s-smoke` needs a cluster, which no machine of this project's CI has: its recipe, its
    help and its refusal, naming what is missing, are what can be checked here."""
    dry = make("--dry-run", "k8s-smoke")
    assert dry.returncode == 0 and dry.stdout.strip().splitlines()[-1] == ".ci/k8s-smoke", dry.stdout
    script = ROOT / ".ci" / "k8s-smoke"
    helped = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=30)
    assert helped.returncode == 0 and "kubernetes mode" in helped.stdout, helped.stdout
    # this machine: a kubectl client (or none) and no cluster; an empty kubeconfig names none either
    (tmp_path / "kubeconfig").write_text("")
    refused = make("k8s-smoke", KUBECONFIG=str(tmp_path / "kubeconfig"))
    why = "no cluster in the current kube context" if shutil.which("kubectl") else "kubectl is not on PATH"
    assert refused.returncode != 0 and f"k8s-smoke: {why}" in refused.stderr, refused.stderr


def test_test_fast_selects_the_quick_suites():
    """`make test-fast` is pytest over the quick suites: many tests, none of the slow ones."""
    dry = make("--dry-run", "test-fast")
    assert dry.returncode == 0, dry.stderr
    command = shlex.split(dry.stdout.strip().splitlines()[-1])  # the target's own recipe comes last
    assert command[0].endswith("pytest"), command
    assert command[1:] == [
        "-n", "2", "--dist", "loadscope", "tests/unit", "tests/dags", "tests/data", "tests/model"
    ], command  # fmt: skip
    collected = subprocess.run(
        [*command, "--collect-only", "-q"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert collected.returncode == 0, collected.stdout[-3000:] + collected.stderr[-3000:]
    tests = [line for line in collected.stdout.splitlines() if "::" in line]
    assert len(tests) > 100, collected.stdout[-3000:]
    slow = [t for t in tests if t.startswith(("tests/e2e", "tests/containers", "tests/helm"))]
    assert slow == [], slow[:10]


def test_install_and_clean_run_for_real(tmp_path):
    installed = make("-s", "install", timeout=900)  # the venv is there: a no-op that must stay one
    assert installed.returncode == 0, installed.stderr
    assert installed.stdout == ""
    # `make clean` in a copy, so that a developer's own .mlops survives the test suite
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    (tmp_path / ".mlops" / "artifacts").mkdir(parents=True)
    (tmp_path / ".mlops" / "artifacts" / "x.json").write_text("{}")
    cleaned = make("clean", cwd=tmp_path)
    assert cleaned.returncode == 0, cleaned.stderr
    assert not (tmp_path / ".mlops").exists()


def test_train_demo_runs_for_real(tmp_path):
    """`make train-demo`: three monthly training runs and April's batch through ``dag.test()``."""
    env = {"MLOPS_HOME": str(tmp_path / "home")}
    demo = make("-s", "train-demo", timeout=900, **env)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    out = demo.stdout
    assert len(re.findall(r"^\[\d/3\] 2013-0[123]: run success in", out, flags=re.M)) == 3, out
    assert "Batch inference (2013-04):" in out and "flights scored by flights-delay v" in out
    assert re.search(r"flights-delay v1 \[.*'champion'.*\]", out), out  # the first model serves


def test_lock_runs_for_real():
    """`make lock` re-locks the images at the versions this .venv runs, every line with its hashes.

    It writes the tracked lock file, as a user's run does; the committed one is put back afterwards.
    """
    lock, tools = ROOT / "containers" / "requirements.lock", ROOT / "containers" / "build-tools.lock"
    estimators = ROOT / "pipelines" / "sklearn_estimators.json"
    committed = {path: path.read_bytes() for path in (lock, tools, estimators)}
    try:
        locked = make("-s", "lock", timeout=600)
        assert locked.returncode == 0, locked.stdout[-2000:] + locked.stderr[-2000:]
        text, tools_text, estimators_text = lock.read_text(), tools.read_text(), estimators.read_text()
    finally:
        for path, content in committed.items():
            path.write_bytes(content)
    pins = dict(re.findall(r"^([A-Za-z0-9._-]+)==(\S+) \\$", text, flags=re.M))
    assert f"wrote containers/requirements.lock: {len(pins)} packages" in locked.stdout, locked.stdout
    assert "wrote containers/build-tools.lock" in locked.stdout
    assert tools_text == committed[tools].decode()  # the same uv, the same hashes
    assert "wrote pipelines/sklearn_estimators.json" in locked.stdout
    assert estimators_text == committed[estimators].decode()  # the scikit-learn tested here
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text.split("Do not edit by hand.\n", 1)[1].strip())
    assert len(blocks) == len(pins) > 50
    assert all("--hash=sha256:" in block for block in blocks), [b for b in blocks if "--hash" not in b]

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    freeze = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), "-m", "pip", "freeze", "--exclude-editable"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    tested = {norm(n): v for n, v in re.findall(r"^([A-Za-z0-9._-]+)==(\S+)$", freeze, flags=re.M)}
    locked_versions = {norm(n): v for n, v in pins.items()}
    # The versions tested here; a package this interpreter's markers skip (async-timeout below
    # Python 3.11.3: the lock is for any 3.11) has no version to compare.
    assert {n: v for n, v in locked_versions.items() if tested.get(n, v) != v} == {}
    assert len(set(locked_versions) - set(tested)) <= 3, set(locked_versions) - set(tested)
    wanted = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {norm(re.match(r"[A-Za-z0-9._-]+", d).group(0)) for d in wanted}
    assert names <= set(locked_versions), names - set(locked_versions)
