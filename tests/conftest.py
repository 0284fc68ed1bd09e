"""Shared fixtures: a private Airflow home, a real MLflow server, slices of the real flights data.

Airflow reads its configuration when first imported, so the environment is
set here, at collection time, before any test module imports it.
"""

from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers on two cores: one thread each in OpenMP (scikit-learn's gradient boosting) and in
    # OpenBLAS (numpy), or their four spinning threads starve each other and the stacks' processes.
    # Set before anything loads those libraries, and inherited by every process a test starts.
    for _threads in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_threads, "1")

import contextlib
import json
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the demo tooling (mlops_demo) is not installed

from mlops_demo.stack import mlflow_server_cmd, stack_env  # noqa: E402
from pipelines.processes import start_group, stop_group  # noqa: E402

SESSION_HOME = Path(tempfile.mkdtemp(prefix="mlops-tests-"))
os.environ.update(stack_env(SESSION_HOME, ROOT))
os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{SESSION_HOME / 'mlflow.db'}"
DEFAULT_CONFIG = ROOT / "pipelines" / "datasets" / "flights.yaml"


def ephemeral_ports() -> range:
    """The ports the kernel hands out to outgoing connections (``ip_local_port_range``)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    return range(low, high + 1)


def free_port() -> int:
    """A free loopback port for a server a test starts, below the ephemeral range.

    A port the kernel picked (bind to 0) lies in the ephemeral range, where any outgoing connection
    of the machine may take it before the server binds it: on two test workers, a stack's Airflow
    API server once lost its port that way ("address already in use"). Below that range only
    servers bind, and each picks at random.
    """
    low = max(ephemeral_ports().start, 10_001)
    for _ in range(100):
        port = 10_000 + int.from_bytes(os.urandom(4), "big") % (low - 10_000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in 10000-{low - 1}")


def wait_http(url: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


class QuietHandler(BaseHTTPRequestHandler):
    """A stand-in server's request handler that keeps its access log out of the test output."""

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def http_stub(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """``handler`` served on a free loopback port on its own thread, for the block; its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


@pytest.fixture(scope="session")
def pg_url() -> str:
    """A PostgreSQL database of this session's own, dropped at the end.

    The prediction log's tests lock and re-index its table: in a database of their own they never
    meet another run's rows or locks (two checkouts on one machine, a run killed half-way).
    """
    import sqlalchemy as sa

    server = "postgresql+psycopg2://postgres@127.0.0.1:5432"
    name = f"mlops_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = sa.create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield f"{server}/{name}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


# -- two workers (`make test` runs `pytest -n 2`) ------------------------------------------------------
# Each xdist worker is a session of its own: this file runs in each, so each has its own Airflow home,
# MLflow server and trained serving models, and tests on different workers share only the machine.
# The unit handed to a worker is a module (its module-scoped stack starts once), or one of these
# groups, which one worker runs from start to end because two of its members must never run at once.
WORKER_GROUPS = {
    # the real-scheduler stacks: two at once on two cores starve each other's tasks past their timeouts
    "scheduler": (
        "tests/e2e/test_ui.py",
        "tests/e2e/test_production_concurrency.py",
        "tests/e2e/test_loop.py",
        "tests/e2e/test_scheduler_backfill.py",
    ),
    # one image build in the engine; `make lock` rewrites the lock file the images install from
    "containers": ("tests/containers/", "tests/e2e/test_makefile.py", "tests/release/"),
}
# Handed out longest first (the groups, then the stacks' modules, the quick suites last), so that
# neither worker is left with a long module at the end while the other idles.
_HAND_OUT_ORDER = ("scheduler", "containers", "tests/e2e/", "tests/helm/", "tests/")


def worker_unit(nodeid: str) -> str:
    """The unit of work a test belongs to: its group's name, or else its module's path."""
    path = nodeid.split("::", 1)[0]
    for group, members in WORKER_GROUPS.items():
        if path.startswith(members):
            return group
    return path


def _hand_out_rank(nodeid: str) -> int:
    unit = worker_unit(nodeid)
    return next(i for i, prefix in enumerate(_HAND_OUT_ORDER) if unit.startswith(prefix))


def pytest_xdist_make_scheduler(config, log):
    """Under ``--dist loadscope``: whole units (groups or modules) to a worker, in hand-out order."""
    if config.getoption("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByUnit(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return worker_unit(nodeid)

    config.option.loadscopereorder = False  # the collection order below, not the count of tests
    return ByUnit(config, log)


def pytest_collection_modifyitems(config, items):
    """On the workers, the collection in hand-out order (a serial run keeps the quick suites first)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: _hand_out_rank(item.nodeid))  # stable: order within a unit kept


@pytest.fixture(scope="session", autouse=True)
def _one_thread_per_worker():
    """On a worker, one OpenMP and BLAS thread in the thread that runs the tests.

    Pytest's plugins load numpy and scikit-learn before this file sets the environment, and OpenMP's
    thread count is a per-thread setting: threadpoolctl sets it where the tests run.
    """
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Each phase's report on the item (``item.rep_call``): fixtures can act on a failed test."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """Airflow's metadata database (SQLite), migrated once per session."""
    subprocess.run(["airflow", "db", "migrate"], check=True, stdout=subprocess.DEVNULL)
    return Path(os.environ["AIRFLOW_HOME"])


MLFLOW_SERVER_HOMES: dict[str, Path] = {}  # url -> the server's store (tests that search it)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> str:
    """A real ``mlflow server`` process on loopback with its own SQLite store."""
    home = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    # the tests' own server: open and on its own SQLite store, whatever profile a module had set in
    # this process's environment when a test first asked for it (the production profile's stores
    # are PostgreSQL and a moto S3 that die with that module)
    profile_stores = {"MLFLOW_BACKEND_STORE_URI", "MLFLOW_ARTIFACTS_DESTINATION"}
    env = {k: v for k, v in os.environ.items() if k not in profile_stores}
    env.update(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLOPS_MLFLOW_AUTH="")
    proc = start_group(mlflow_server_cmd(home, port, env), env, home / "server.log")
    url = f"http://127.0.0.1:{port}"
    MLFLOW_SERVER_HOMES[url] = home
    try:
        wait_http(f"{url}/health", 90)
    except TimeoutError:
        stop_group(proc, first=signal.SIGKILL)
        raise
    yield url
    stop_group(proc, first=signal.SIGTERM)


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    """A fresh embedded store per test: artifacts on disk, MLflow on SQLite."""
    home = tmp_path / "mlops"
    monkeypatch.setenv("MLOPS_HOME", str(home))
    monkeypatch.delenv("MLOPS_ARTIFACT_ROOT", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    monkeypatch.setenv("MLOPS_CONFIG", str(DEFAULT_CONFIG))
    return home


@pytest.fixture(scope="session")
def flights_frame():
    """The real flights of Jan-Mar 2013 with weather joined, as the bundled source reads them."""
    import pandas as pd

    from pipelines import sources
    from pipelines.config import load_config

    config = load_config(DEFAULT_CONFIG)
    return sources.read_window(
        config.dataset, pd.Timestamp("2013-01-01", tz="UTC"), pd.Timestamp("2013-04-01", tz="UTC")
    )


def dataset_config(tmp_path: Path, uri: str, **changes) -> Path:
    """A copy of the flights config pointing at another file (weather already joined)."""
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    data["dataset"]["source"] = {"kind": "file", "uri": uri}
    data["dataset"]["expectations"] = str(DEFAULT_CONFIG.parent / data["dataset"]["expectations"])
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    path = tmp_path / "dataset.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def model_catalogue(folder: Path, model_names: dict[str, str] | None = None) -> Path:
    """A catalogue folder (``MLOPS_CONFIG_DIR``) with the bundled flights and car-loan configs.

    ``model_names`` renames models by config (``{"car_loan": "car-loan-x"}``), so that a test's
    registry entries never meet another test's on the shared MLflow server.
    """
    import shutil

    datasets = DEFAULT_CONFIG.parent
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("flights", "car_loan"):
        data = yaml.safe_load((datasets / f"{name}.yaml").read_text())
        if model_names and name in model_names:
            data["registry"]["model_name"] = model_names[name]
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        shutil.copy(datasets / f"{name}.expectations.yaml", folder)  # read by the config, not a model
    return folder


def walkthrough(page: str, name: str) -> list[str]:
    """The command lines of the ``<!-- walkthrough: name ... -->`` block of a docs page, as written."""
    text = (ROOT / "docs" / page).read_text()
    marker = f"<!-- walkthrough: {name} "
    assert marker in text, f"docs/{page} has no walkthrough {name!r}"
    block = text[text.index(marker) :].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def run_line(line: str, cwd: Path, env: dict[str, str], timeout: float = 600, inherit: bool = True) -> str:
    """Run one documented command line in bash, as a user pastes it; its stdout (fails on an error).

    ``inherit=False``: ``env`` is the whole environment (a new user's shell: no project variable).
    """
    proc = subprocess.run(
        ["bash", "-c", f"set -eo pipefail; {line}"], cwd=cwd, env={**os.environ, **env} if inherit else env,
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, f"{line}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


# -- serving and deployment -------------------------------------------------------------------------
SERVING_MODEL = "flights-serving"


def serving_config(tmp_path: Path) -> Path:
    """The flights config under another model name (so it never meets the training tests' model)."""
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    data["registry"] = {"model_name": SERVING_MODEL, "experiment": SERVING_MODEL}
    data["dataset"]["expectations"] = str(DEFAULT_CONFIG.parent / data["dataset"]["expectations"])
    data["deploy"]["rollout"]["poke_seconds"] = 1
    # the fixture's versions are the documented windows (v2 on Feb-Apr), whatever the default window
    data["ingest"]["window_months"] = 3
    # v3 is registered on purpose though far worse: no swing band, so its rollouts need no person
    data["gate"]["swing_band"] = None
    path = tmp_path / "serving.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="session")
def serving_home(mlflow_server, tmp_path_factory) -> dict:
    """Three registered versions of ``flights-serving`` on the real MLflow server.

    v1 trained on Jan-Mar 2013, v2 on Feb-Apr, v3 on Jan-Mar with shuffled labels (a model
    that is plainly worse; the gate is relaxed so that it registers). Trained in process by
    the plain runner: the DAGs themselves are tested elsewhere.
    """
    from pipelines.context import StepContext
    from pipelines.pipeline import TRAINING
    from pipelines.runner import run_pipeline
    from pipelines.settings import Settings

    home = tmp_path_factory.mktemp("serving-home")
    config = serving_config(home)
    settings = Settings(
        home=home,
        artifact_root=str(home / "artifacts"),
        tracking_uri=mlflow_server,
        config_path=str(config),
    )
    runs = [
        ("2013-04-01", {}),
        ("2013-05-01", {}),
        ("2013-04-01", {"shuffle_labels": True, "gate_min_value": 0.0, "gate_max_drop": 1.0}),
    ]
    versions = []
    for i, (end, overrides) in enumerate(runs, 1):
        ctx = StepContext.create(
            dag_id="training",
            run_id=f"serving-fixture-{i}",
            interval_start=None,
            interval_end=end,
            overrides=overrides,
            settings=settings,
        )
        versions.append(run_pipeline(TRAINING, ctx)["register"]["version"])
    assert versions == ["1", "2", "3"], versions
    env = {
        "MLFLOW_TRACKING_URI": mlflow_server,
        "MLOPS_HOME": str(home),
        "MLOPS_CONFIG": str(config),
        "MLOPS_ARTIFACT_ROOT": str(home / "artifacts"),
    }
    return {"settings": settings, "env": env, "home": home, "config": config}


@pytest.fixture(scope="session")
def april_rows() -> tuple[list[dict], object]:
    """Real April 2013 flights as request records, with their true labels.

    Read with the bundled config (the serving models' features and source): asking for rows trains
    nothing, so a worker whose tests only send requests to their own stack never trains the three
    serving models.
    """
    import pandas as pd

    from pipelines import sources
    from pipelines.config import load_config

    config = load_config(DEFAULT_CONFIG)
    frame = sources.read_window(
        config.dataset, pd.Timestamp("2013-04-01", tz="UTC"), pd.Timestamp("2013-05-01", tz="UTC")
    )
    frame = frame[frame["arr_delay"].notna()].sample(4000, random_state=0)
    features = frame[config.dataset.features.all]
    records = features.astype(object).where(features.notna(), None).to_dict("records")
    for record in records:
        for name in config.dataset.features.numeric:
            if record[name] is not None:
                record[name] = float(record[name])
    return records, (frame["arr_delay"] > 15).astype(int).to_numpy()


class ServerProcess:
    """``mlops serve`` in its own process group, with its output in a file."""

    def __init__(self, env: dict[str, str], log_path: Path, **extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.env = {**os.environ, **env, "MLOPS_SERVING_POLL_SECONDS": "0.3", **extra}
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> ServerProcess:
        cmd = [sys.executable, "-m", "pipelines.cli", "serve", "--port", str(self.port)]
        self.proc = start_group(cmd, self.env, self.log_path)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2):
                    return self
            except OSError:
                time.sleep(0.2)
        self.kill()
        raise TimeoutError(f"server did not start: {self.log_path.read_text()[-2000:]}")

    def wait_ready(self, timeout: float = 90) -> ServerProcess:
        """Until ``/ready`` says a model is loaded (``/health`` answers before that)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/ready", timeout=2):
                    return self
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(f"no model loaded: {self.log_path.read_text()[-2000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            stop_group(self.proc, first=sig, grace=20)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


@pytest.fixture(scope="module")
def serving_dagbag(serving_home, airflow_db):
    """The DAGs as parsed with the serving model's config; its environment holds while they run."""
    from airflow.dag_processing.dagbag import DagBag

    with pytest.MonkeyPatch.context() as mp:
        for key, value in serving_home["env"].items():
            mp.setenv(key, value)
        bag = DagBag(dag_folder=str(ROOT / "dags"))
        assert bag.import_errors == {}
        yield bag


def reset_deployment(settings, champion: str = "1") -> None:
    """Champion ``champion``, no challenger, no previous, no rollout."""
    from pipelines import deploy, tracking
    from pipelines.serving.policy import POLICY_TAG, Policy

    client = tracking.client(settings)
    client.set_registered_model_tag(SERVING_MODEL, POLICY_TAG, Policy().to_json())
    client.set_registered_model_alias(SERVING_MODEL, "champion", champion)
    for alias in ("challenger", deploy.PREVIOUS):
        with contextlib.suppress(Exception):  # not set
            client.delete_registered_model_alias(SERVING_MODEL, alias)


# -- containers: a Docker-compatible engine and the project's images ---------------------------------
# `make test` points DOCKER_HOST at an engine (podman's Docker API on this machine). Without one,
# the container tests skip, except in CI (`CI` set), where a missing engine is a failure.


@pytest.fixture(scope="session")
def docker_client():
    import docker

    try:
        client = docker.from_env(timeout=300)
        client.ping()
    except Exception as exc:  # no socket, refused, ...
        message = f"no Docker-compatible engine at DOCKER_HOST={os.environ.get('DOCKER_HOST')!r}: {exc}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message + " (run `make container-engine`)")
    return client


@pytest.fixture(scope="session")
def images(docker_client) -> dict[str, dict]:
    """Both images, built by ``make images`` as the README says (layer cache: fast when unchanged)."""
    proc = subprocess.run(["make", "-s", "images"], cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()  # the summary is the JSON list that ends the output
    summary = "\n".join(lines[max(i for i, line in enumerate(lines) if line == "[") :])
    built = {image["target"]: image for image in json.loads(summary)}
    for image in built.values():
        print(f"image {image['tag']}: {image['size_mb']} MB, built in {image['build_seconds']} s")
    return built


@pytest.fixture
def shared_store(tmp_path) -> Path:
    """A folder step containers (UID 10001) can write, standing in for the shared artifact store."""
    store = tmp_path / "store"
    store.mkdir()
    store.chmod(0o777)
    return store
