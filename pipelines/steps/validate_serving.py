"""Infra validation: serve the candidate in a sandbox process before it may take any traffic.

TFX's InfraValidator idea: a model that passed the offline gate can still fail
to load in the serving stack (a missing dependency, a type the serializer
refuses) or answer too slowly. The candidate's files are downloaded and served
by ``mlops serve`` in its own process, with no prediction log, no registry and
no secret in its environment; it must become ready, answer real rows with
exactly the probabilities of the scikit-learn pipeline, and meet the latency
budget.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import numpy as np

from pipelines import model_format, processes, tracking
from pipelines.context import StepContext
from pipelines.errors import InfraValidationFailed, UntrustedModel
from pipelines.pipeline import Status, skipped
from pipelines.results import NoInputs, Skipped, ValidateServingResult
from pipelines.settings import Settings

log = logging.getLogger(__name__)
READY_TIMEOUT_S = 120.0
TOLERANCE = 1e-6


def candidate_version(ctx: StepContext) -> str | None:
    """The version to deploy: the run parameter, else the ``challenger`` alias."""
    if ctx.config.deploy.version:
        return ctx.config.deploy.version
    from pipelines import deploy

    return deploy.aliases(ctx.settings, ctx.config.registry.model_name).get(tracking.CHALLENGER)


def _listening_socket() -> socket.socket:
    """A loopback socket, bound and listening, for the sandbox to inherit: the port is the
    sandbox's from this moment (picking a free port and binding it later was a race)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def reference_rows(path: Path) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Rows to query (the model's input example plus edge cases) and the pipeline's own answers.

    This deserialises the candidate: it runs in the sandbox's environment (:func:`_reference_in_sandbox`),
    never in the worker, which holds the credentials.
    """
    from mlflow.models import Model

    from pipelines.serving.model import FeatureSchema, input_example, parity_rows

    meta = Model.load(path / "MLmodel")
    schema = FeatureSchema.from_signature(meta.signature)

    batch = parity_rows(input_example(meta, path, schema), schema)
    expected = model_format.load_pipeline(path).predict_proba(batch.frame(schema))[:, 1]
    return batch.records(schema), expected


def _reference_in_sandbox(path: Path, env: dict[str, str], workdir: Path) -> tuple[list, np.ndarray]:
    """:func:`reference_rows` in a process with the sandbox's environment (no secret)."""
    import json

    done = subprocess.run(
        [sys.executable, "-m", "pipelines.steps.validate_serving", str(path)],
        env=env, cwd=workdir, capture_output=True, text=True, timeout=READY_TIMEOUT_S,
    )  # fmt: skip
    if done.returncode != 0:
        raise InfraValidationFailed(f"the reference pipeline cannot score: {done.stderr.strip()[-1000:]}")
    answer = json.loads(done.stdout)
    return answer["records"], np.asarray(answer["expected"], dtype=float)


def _not_dumpable() -> None:
    """Make this process's /proc files (its environ: the credentials) root's, so a process of the
    same user, such as a candidate model's sandbox, cannot read them (Linux ``PR_SET_DUMPABLE``;
    it also refuses ptrace by that user). Elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_dumpable = 4
    if ctypes.CDLL(None, use_errno=True).prctl(pr_set_dumpable, 0, 0, 0, 0) != 0:
        log.warning("could not make the worker non-dumpable (errno %s)", ctypes.get_errno())


# Passed to the sandbox as they are: where programs and the interpreter's files are found.
SANDBOX_PASSTHROUGH = ("PATH", "LANG", "LC_ALL", "PYTHONPATH", "VIRTUAL_ENV", "SSL_CERT_FILE")


def sandbox_env(workdir: Path, settings: Settings) -> dict[str, str]:
    """The environment of every process that deserialises a candidate: no credential of any kind."""
    env = {k: os.environ[k] for k in SANDBOX_PASSTHROUGH if k in os.environ}
    return env | {
        "HOME": str(workdir),
        "TMPDIR": str(workdir),
        "OMP_NUM_THREADS": "1",
        "MLOPS_HOME": str(workdir / "home"),
        "MLOPS_CONFIG": settings.config_path,  # the features and their types: a file, no secret
        "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'no-registry.db'}",
        "MLOPS_PII_KEY": secrets.token_hex(16),
    }


class Sandbox:
    """``mlops serve`` of one downloaded model folder, on a free loopback port, with no secrets.

    The worker downloads the candidate's files (downloading loads nothing); the sandbox serves
    that folder with no registry, no stores and no credentials in its environment: not MLflow's,
    not the cloud's, not the databases', not the personal-data key (a random one stands in).
    Whatever the candidate's files could make a server do, they find nothing to take.
    """

    def __init__(self, version: str, model_name: str, workdir: Path, settings: Settings, model_dir: Path,
                 threshold: float | None):  # fmt: skip
        self.socket = _listening_socket()
        self.port = self.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        env = sandbox_env(workdir, settings)
        env |= {
            "MLOPS_SERVING_MODEL": model_name,
            "MLOPS_SERVING_VERSION": version,
            "MLOPS_SERVING_MODEL_DIR": str(model_dir),
            "MLOPS_SERVING_LOG_PREDICTIONS": "false",
            "MLOPS_SERVING_POLL_SECONDS": "1",
            # the sandbox ends when this worker does, even if it is killed (pipelines.cli)
            "MLOPS_SERVING_PARENT_PID": str(os.getpid()),
        }
        if threshold is not None:
            env["MLOPS_SERVING_THRESHOLD"] = str(threshold)
        self.env = env
        self.output = workdir / "server.log"
        fd = self.socket.fileno()
        cmd = [sys.executable, "-m", "pipelines.cli", "serve", "--fd", str(fd)]
        self.proc = processes.start_group(cmd, env, self.output, cwd=workdir, pass_fds=(fd,))

    def tail(self, lines: int = 15) -> str:
        text = self.output.read_text(errors="replace") if self.output.exists() else ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def wait_ready(self, client, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise InfraValidationFailed(f"the server exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                answer = client.get(f"{self.url}/ready", timeout=2)
                body = answer.json()
                if answer.status_code == 200:
                    return body
                if body.get("registry_error"):
                    raise InfraValidationFailed(f"the model did not load: {body['registry_error']}")
            except (OSError, ValueError) as exc:
                log.debug("sandbox not up yet: %s", exc)
            except Exception as exc:
                if isinstance(exc, InfraValidationFailed):
                    raise
                log.debug("sandbox not up yet: %s", exc)
            time.sleep(0.3)
        raise InfraValidationFailed(f"the server was not ready within {timeout:.0f}s:\n{self.tail()}")

    def stop(self) -> None:
        self.socket.close()
        processes.stop_group(self.proc, first=signal.SIGTERM)


def _probability(answer) -> float:
    """The one probability of a single-row ``/predict`` answer."""
    return float(answer.json()["predictions"][0]["probability"])


def check_served(ctx: StepContext, version: str, url: str, client, records, expected) -> dict[str, Any]:
    """Real queries against a running server: correct answers and the latency budget."""
    deploy = ctx.config.deploy
    answer = client.post(f"{url}/predict", json={"records": records}, timeout=30)
    if answer.status_code != 200:
        raise InfraValidationFailed(f"a real query got HTTP {answer.status_code}: {answer.text[:500]}")
    body = answer.json()
    if str(body.get("model_version")) != str(version):
        raise InfraValidationFailed(f"answered by version {body.get('model_version')}, expected {version}")
    got = np.array([p["probability"] for p in body["predictions"]], dtype=float)
    if got.shape != expected.shape or not np.all(np.isfinite(got)):
        raise InfraValidationFailed(f"expected {len(expected)} finite probabilities, got {got.tolist()[:10]}")
    gap = float(np.max(np.abs(got - expected)))
    if gap > TOLERANCE:
        raise InfraValidationFailed(f"served probabilities differ from the pipeline's by {gap:.3g}")
    timings = []
    for i in range(deploy.infra_queries):
        started = time.perf_counter()
        single = client.post(f"{url}/predict", json={"records": [records[i % len(records)]]}, timeout=30)
        timings.append((time.perf_counter() - started) * 1000)
        if single.status_code != 200:
            raise InfraValidationFailed(
                f"single-row query {i} got HTTP {single.status_code}: {single.text[:300]}"
            )
        row = i % len(records)
        alone = _probability(single)
        if not abs(alone - expected[row]) <= TOLERANCE:
            raise InfraValidationFailed(f"row {row} alone was answered {alone:.6f}, not {expected[row]:.6f}")
    p50, p95 = (float(np.percentile(timings, q)) for q in (50, 95))
    if p95 > deploy.latency_budget_ms:
        raise InfraValidationFailed(
            f"too slow: p95 {p95:.1f} ms over {deploy.infra_queries} single-row queries; "
            f"the budget is {deploy.latency_budget_ms:.0f} ms"
        )
    return {"rows_checked": len(expected), "max_abs_diff": gap, "p50_ms": p50, "p95_ms": p95}


def check_concurrent(ctx: StepContext, url: str, client, records, expected) -> dict[str, Any]:
    """``deploy.infra_concurrency`` clients at once, ``max(infra_queries, infra_concurrency)``
    single-row requests in all: every one answered, each with its own row's probability (the server
    batches concurrent requests; an answer given to the wrong request is a failure, not noise). Each
    row was answered correctly alone before (:func:`check_served`), so a wrong answer here is the
    concurrency's. Rows are sent in order of distinct expected probabilities, so that two requests in
    flight that swapped answers cannot both look right."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    deploy = ctx.config.deploy
    total, clients = max(deploy.infra_queries, deploy.infra_concurrency), deploy.infra_concurrency
    _, distinct = np.unique(np.round(np.asarray(expected, dtype=float), 9), return_index=True)
    order = [int(i) for i in np.sort(distinct)]
    if len(order) < clients:
        log.warning(
            "only %d rows with distinct answers for %d clients: some swaps cannot show", len(order), clients
        )

    def one(i: int) -> float:
        row = order[i % len(order)]
        started = time.perf_counter()
        try:
            answer = client.post(f"{url}/predict", json={"records": [records[row]]}, timeout=30)
            elapsed = (time.perf_counter() - started) * 1000
            got = _probability(answer) if answer.status_code == 200 else None
        except Exception as exc:  # a hang (timeout), a dropped connection, an answer of the wrong shape
            raise InfraValidationFailed(
                f"with {clients} clients at once, query {i} failed: {exc!r}"
            ) from None
        if got is None:
            raise InfraValidationFailed(
                f"with {clients} clients at once, query {i} got HTTP {answer.status_code}: "
                f"{answer.text[:200]}"
            )
        if not abs(got - expected[row]) <= TOLERANCE:
            raise InfraValidationFailed(
                f"with {clients} clients at once, row {row} was answered {got:.6f}, not its own "
                f"{expected[row]:.6f} (as it was alone): concurrent requests got each other's answers"
            )
        return elapsed

    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(one, i) for i in range(total)]
        try:
            timings = [future.result() for future in as_completed(futures)]
        except InfraValidationFailed:
            pool.shutdown(cancel_futures=True)  # the first failure decides: the queued rest never go out
            raise
    return {"concurrent_requests": total, "concurrent_p95_ms": float(np.percentile(timings, 95))}


def peak_rss_mb(pid: int) -> float | None:
    """A process's peak resident memory so far (Linux ``VmHWM``), in MB; None where /proc is not."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            line = next(line for line in fh if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None
    return int(line.split()[1]) / 1024


def check_memory(ctx: StepContext, proc: Any) -> dict[str, Any]:
    """The sandbox's peak memory, after loading and answering, under ``deploy.infra_memory_limit_mb``.

    The candidate alone, as a direct rollout holds it: during a canary, A/B or shadow rollout a
    server holds the champion too, so leave room for both in the ceiling.
    """
    if proc.poll() is not None:
        raise InfraValidationFailed(f"the server exited ({proc.returncode}) while it was being checked")
    limit, peak = ctx.config.deploy.infra_memory_limit_mb, peak_rss_mb(proc.pid)
    if limit is not None and peak is None:
        log.warning("the sandbox's peak memory cannot be read here (no /proc): the ceiling is not checked")
    if limit is not None and peak is not None and peak > limit:
        raise InfraValidationFailed(
            f"the server took {peak:.0f} MB at peak, over the memory ceiling of {limit:.0f} MB "
            "(deploy.infra_memory_limit_mb: the serving pods' limit): it would be OOM-killed there"
        )
    return {"peak_rss_mb": peak}


def run(ctx: StepContext, inputs: NoInputs) -> ValidateServingResult | Skipped:
    """Start the candidate in a sandbox, query it, stop it; raise if it fails."""
    import httpx
    import mlflow

    name = ctx.config.registry.model_name
    version = candidate_version(ctx)
    if version is None:
        return skipped(f"{name} has no challenger to deploy", version=None)
    from pipelines.serving.registry import download_version

    client_ = tracking.client(ctx.settings)
    tags = client_.get_model_version(name, version).tags or {}
    threshold = tags.get("threshold")
    _not_dumpable()  # before any process that handles the candidate starts
    try:
        with tempfile.TemporaryDirectory(prefix="mlops-infra-") as tmp, httpx.Client() as http:
            workdir = Path(tmp)
            model_dir = download_version(ctx.settings, name, version, workdir / "models")  # files only
            try:  # files written into the artifact store after registration never reach a process
                model_format.check_digest(model_dir, tags.get(model_format.DIGEST_TAG), f"{name} v{version}")
            except UntrustedModel as exc:
                raise InfraValidationFailed(f"v{version} cannot be served: {exc}") from None
            sandbox = Sandbox(version, name, workdir, ctx.settings, model_dir, threshold and float(threshold))
            try:
                ready = sandbox.wait_ready(http, READY_TIMEOUT_S)
                records, expected = _reference_in_sandbox(
                    model_dir, sandbox_env(workdir, ctx.settings), workdir
                )
                checks = check_served(ctx, version, sandbox.url, http, records, expected)
                checks |= check_concurrent(ctx, sandbox.url, http, records, expected)  # httpx: thread-safe
                checks |= check_memory(ctx, sandbox.proc)
            finally:
                sandbox.stop()
    except InfraValidationFailed as exc:
        client_.set_model_version_tag(name, version, "infra_validation", f"failed: {exc}"[:500])
        raise InfraValidationFailed(f"infra validation of {name} v{version} failed: {exc}") from None
    result = {"version": str(version), "runtime": ready["champion"]["runtime"], **checks}
    client_.set_model_version_tag(name, version, "infra_validation", "passed")
    client_.set_model_version_tag(name, version, "infra_validation.p95_ms", f"{checks['p95_ms']:.2f}")
    if (peak := checks["peak_rss_mb"]) is not None:
        client_.set_model_version_tag(name, version, "infra_validation.peak_rss_mb", f"{peak:.0f}")
    with tracking.pipeline_run(ctx, "validate_serving"):
        mlflow.log_metrics({f"infra_{k}": v for k, v in checks.items() if v is not None})
        mlflow.set_tag("deploy.version", str(version))
    log.info(
        "infra validation of v%s passed: p95 %.1f ms, exact answers, %d at once (p95 %.1f ms), peak %s MB",
        version, checks["p95_ms"], checks["concurrent_requests"], checks["concurrent_p95_ms"],
        "?" if checks["peak_rss_mb"] is None else f"{checks['peak_rss_mb']:.0f}",
    )  # fmt: skip
    # Set at registration when the gate saw a swing wider than its band: a person decides.
    approval_reason = client_.get_model_version(name, version).tags.get("approval.reason")
    return cast(
        ValidateServingResult,
        {"status": Status.PASSED, "model_name": name, **result, "approval_reason": approval_reason},
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.steps.validate_serving MODEL_DIR``: the reference rows and answers as
    JSON on stdout (run by the worker in the sandbox's environment)."""
    import json

    [path] = sys.argv[1:] if argv is None else argv
    records, expected = reference_rows(Path(path))
    print(json.dumps({"records": records, "expected": expected.tolist()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
