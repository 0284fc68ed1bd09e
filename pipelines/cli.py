"""The ``mlops`` command.

``mlops step <name>`` is the single entrypoint every execution mode calls (in
process, subprocess, container, Kubernetes pod). Its result is the step's JSON
document, printed on stdout and written to ``--result-file`` (by default
``/airflow/xcom/return.json`` when that folder exists, as in a pod).

Exit codes: 0 done, 99 the step decided to skip (e.g. the gate rejected the
candidate), 3 bad input or config that a retry cannot fix, 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import uuid
from pathlib import Path
from typing import Any

from pipelines.errors import ConfigError, DataError, PipelineError

EXIT_SKIPPED = 99
EXIT_NOT_RETRYABLE = 3
XCOM_RESULT = Path("/airflow/xcom/return.json")


def _json_arg(value: str) -> Any:
    """Parse a JSON argument, or ``@path`` to read it from a file."""
    text = Path(value[1:]).read_text() if value.startswith("@") else value
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from exc


def _param(value: str) -> tuple[str, Any]:
    name, sep, raw = value.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {value!r}")
    try:
        return name, json.loads(raw)
    except json.JSONDecodeError:
        return name, raw


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dag-id", default="training")
    parser.add_argument("--run-id", default=None, help="default: a new manual run id")
    parser.add_argument("--interval-start", default=None, help="default: interval end minus one month")
    parser.add_argument(
        "--interval-end",
        default=None,
        help="end of the data interval (exclusive); default: the config's schedule.end_date, or now",
    )
    parser.add_argument(
        "--param",
        action="append",
        type=_param,
        default=[],
        metavar="NAME=VALUE",
        help="run parameter, e.g. estimator=logistic_regression, window_months=2",
    )


def _context_from_args(args: argparse.Namespace):
    from pipelines.context import StepContext

    if getattr(args, "context", None):
        return StepContext.from_json(args.context)
    return StepContext.create(
        dag_id=args.dag_id,
        run_id=args.run_id or f"manual__{uuid.uuid4().hex[:12]}",
        interval_start=args.interval_start,
        interval_end=args.interval_end,
        interval_origin="the --interval-end option (or its default)",
        overrides=dict(args.param),
    )


def _cmd_step(args: argparse.Namespace) -> int:
    from pipelines.pipeline import is_skipped
    from pipelines.runner import execute_step

    ctx = _context_from_args(args)
    result = execute_step(args.name, ctx, args.inputs or {})
    target = args.result_file or (XCOM_RESULT if XCOM_RESULT.parent.is_dir() else None)
    if target:
        Path(target).write_text(json.dumps(result))
    print(json.dumps(result))
    return EXIT_SKIPPED if is_skipped(result) else 0


def _cmd_run(args: argparse.Namespace) -> int:
    from pipelines.pipeline import PIPELINES
    from pipelines.runner import run_pipeline

    ctx = _context_from_args(args)
    results = run_pipeline(PIPELINES[args.pipeline], ctx, echo=True, approve=args.approve)
    print(json.dumps(results, indent=2))
    last = list(results.values())[-1] if results else {}
    # stopped before a rollout that a person must approve: not a success that did nothing
    return EXIT_SKIPPED if last.get("approval_required") else 0


def _auth_summary(tokens: dict[str, str]) -> str:
    return f"on: {', '.join(sorted(tokens))} tokens" if tokens else "off"


def _die_with(parent: int) -> None:
    """End this process when ``parent`` dies, even by SIGKILL (Linux's PR_SET_PDEATHSIG): a
    sandbox must not outlive the worker that started it."""
    import ctypes
    import os
    import signal

    if sys.platform != "linux":
        return
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the line above: nobody will signal us
        raise SystemExit(f"the process that started this server ({parent}) is gone")


def _cmd_serve(args: argparse.Namespace) -> int:
    import os

    if os.environ.get("MLOPS_SERVING_PARENT_PID"):
        _die_with(int(os.environ["MLOPS_SERVING_PARENT_PID"]))

    # The server reads its own registries, one per model: in prometheus_client's multiprocess mode
    # (switched on by this variable, which ``import feast`` sets for its own server and a parent
    # may pass on) every model's series of one name and labels would share one value.
    for name in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir", "PROMETHEUS_MULTIPROCESS_DIR"):
        os.environ.pop(name, None)
    # One OpenMP thread per worker: two workers with two threads each fight over two cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # The registry watcher polls again every few seconds anyway: MLflow's own retries (seven, with
    # backoff) would only hide an outage from /ready for minutes.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    if args.version:
        os.environ["MLOPS_SERVING_VERSION"] = str(args.version)
    from pipelines.serving.config import ServingSettings

    configs, broken = ServingSettings.for_models()  # fail here, with a clear message, not in every worker
    config = configs[0]
    import uvicorn

    where = f"inherited socket {args.fd}" if args.fd is not None else f"http://{args.host}:{args.port}"
    served = ", ".join(c.model_name for c in configs)
    print(
        f"serving {served}"
        + (f" v{config.pinned_version}" if config.pinned_version else " @champion (following the registry)")
        + f" on {where}  (auth {_auth_summary(config.tokens)})"
        + ("" if len(configs) == 1 else "; by name: /models/<name>/predict, /v2/models/<name>/infer"),
        file=sys.stderr,
        flush=True,
    )
    for name, error in broken.items():
        print(f"not serving {name}: its config does not load: {error}", file=sys.stderr, flush=True)
    # A listening socket handed down by the parent (infra validation's sandbox): the port was
    # bound before this process started, so nothing else can take it in between.
    bind = {"fd": args.fd} if args.fd is not None else {"host": args.host, "port": args.port}
    from pipelines.serving.http import HeaderDeadlineProtocol

    uvicorn.run(
        "pipelines.serving.app:create_app",
        factory=True,
        **bind,
        workers=args.workers,
        loop="uvloop",
        http=HeaderDeadlineProtocol,  # httptools, with a deadline on the headers (slowloris)
        ws="none",  # no WebSocket route: an upgrade would leave every deadline of the HTTP protocol
        access_log=args.access_log,
        log_level="info" if args.verbose else "warning",
        timeout_graceful_shutdown=10,
        limit_concurrency=config.limit_concurrency,  # a 503 beyond it, before any body is read
    )
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    from pipelines import deploy
    from pipelines.config import load_config
    from pipelines.settings import Settings

    settings = Settings.from_env()
    name = args.model or load_config(settings.config_path).registry.model_name
    result = deploy.rollback(settings, name, reason=args.reason)
    print(json.dumps(result))
    return 0


def _cmd_backtest(args: argparse.Namespace) -> int:
    from pipelines import backtest, reports, storage, util
    from pipelines.config import load_config
    from pipelines.settings import Settings

    settings = Settings.from_env()
    config = load_config(args.config or settings.config_path)
    windows = [None if w == "all" else int(w) for w in args.windows.split(",")]
    _, first, last = util.replay_months(
        config.schedule.start_date, config.schedule.end_date, first=args.first, last=args.last
    )
    result = backtest.run(
        config, first=first, last=last, windows=windows,
        progress=lambda m: print(f"[backtest] {m}", file=sys.stderr, flush=True),
    )  # fmt: skip
    out = args.out or storage.join(settings.artifact_root, "backtest", config.dataset.name)
    json_uri = storage.write_json(storage.join(out, "backtest.json"), result)
    html_uri = storage.write_text(storage.join(out, "backtest.html"), reports.backtest_html(result))
    print(backtest.table_text(result))
    print(f"\nreport: {html_uri}\ndata:   {json_uri}")
    return 0


def _cmd_suggest_expectations(args: argparse.Namespace) -> int:
    """Profile the training window and write an expectation suite a person can edit."""
    from pathlib import Path

    from pipelines import sources, suggest
    from pipelines.dataset import label_frame, select_columns

    ctx = _context_from_args(args)
    dataset = ctx.config.dataset
    start, end = ctx.training_window()
    ctx.check_window(start.to_pydatetime(), end.to_pydatetime())
    raw = sources.read_window(dataset, start.to_pydatetime(), end.to_pydatetime())
    if raw.empty:
        raise DataError(f"no rows in the source between {start} and {end}: nothing to profile")
    snapshot = select_columns(label_frame(raw, dataset)[0], dataset)
    target = Path(args.output) if args.output else ctx.config.expectations_path
    if target.exists() and not args.force:
        raise ConfigError(f"{target} exists: pass --force to replace it, or --output for another file")
    origin = f"{len(snapshot)} rows in [{start:%Y-%m-%d}, {end:%Y-%m-%d})"
    spec = suggest.suggest(snapshot, dataset)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(suggest.render(spec, dataset, origin))
    print(f"wrote {len(spec)} expectations for {dataset.name} ({origin}) to {target}")
    if dataset.expectations is None:
        print(f"the config names no suite yet: set dataset.expectations: {target.name} to use it")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    """List the catalogue's models, their config files and DAG ids; exit 3 if a config does not load."""
    from pipelines.catalogue import load_catalogue

    models = load_catalogue()
    width = max(len(m.name) for m in models)
    for model in models:
        state = f"error: {model.error}" if model.error else f"DAGs {model.dag_id('<dag>')}"
        print(f"{model.name:<{width}}  {model.path}  {state}")
    return EXIT_NOT_RETRYABLE if any(m.error for m in models) else 0


def _use_model(name: str) -> None:
    """Make the catalogue model ``name`` this command's config (``MLOPS_CONFIG``)."""
    import os

    from pipelines.catalogue import find_model, load_catalogue

    model = find_model(name)
    if model is None:
        known = ", ".join(m.name for m in load_catalogue() if m.config) or "none"
        raise ConfigError(f"no model {name!r} in the catalogue (MLOPS_CONFIG_DIR); its models: {known}")
    os.environ["MLOPS_CONFIG"] = str(model.path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlops", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument(
        "-m", "--model", dest="catalogue_model", metavar="NAME",
        help="run for this model of the catalogue (MLOPS_CONFIG_DIR) instead of MLOPS_CONFIG's",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help="list the models of the catalogue and check their configs")
    models.set_defaults(func=_cmd_models)

    step = sub.add_parser("step", help="run one pipeline step and print its JSON result")
    step.add_argument("name", help="ingest, validate, train, evaluate or register")
    step.add_argument("--context", type=_json_arg, help="run context as JSON or @file (as Airflow passes it)")
    step.add_argument("--inputs", type=_json_arg, help="upstream results as JSON or @file")
    step.add_argument("--result-file", help="also write the result here")
    _add_run_arguments(step)
    step.set_defaults(func=_cmd_step)

    run = sub.add_parser("run", help="run a whole pipeline in this process, without Airflow")
    run.add_argument("pipeline", nargs="?", default="training")
    run.add_argument(
        "--approve", action="store_true",
        help="approve a rollout that needs a person (deploy.approval, a wide metric swing) as yourself",
    )  # fmt: skip
    _add_run_arguments(run)
    run.set_defaults(func=_cmd_run)

    serve = sub.add_parser("serve", help="serve the champion (and any rollout) over HTTP")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--fd", type=int, help="serve on this inherited listening socket (not --host/--port)")
    serve.add_argument("--version", help="serve this registered version only (no registry polling)")
    serve.add_argument("--access-log", action="store_true")
    serve.set_defaults(func=_cmd_serve)

    backtest = sub.add_parser(
        "backtest", help="replay months under retraining policies and compare them (no Airflow, no server)"
    )
    backtest.add_argument("--config", help="dataset config (default: MLOPS_CONFIG or the bundled flights)")
    backtest.add_argument(
        "--first", help="first month served (YYYY-MM; default: the fourth month of the config's span)"
    )
    backtest.add_argument("--last", help="last month served (default: the last full month of the span)")
    backtest.add_argument("--windows", default="3,6,12", help="training windows to compare (months, or all)")
    backtest.add_argument("--out", help="folder or URL for backtest.json and backtest.html")
    backtest.set_defaults(func=_cmd_backtest)

    suggest = sub.add_parser(
        "suggest-expectations",
        help="profile the training window and write an expectation suite to edit (like TFX's SchemaGen)",
    )
    suggest.add_argument("--output", help="where to write it (default: the config's dataset.expectations)")
    suggest.add_argument("--force", action="store_true", help="replace a suite that exists")
    _add_run_arguments(suggest)
    suggest.set_defaults(func=_cmd_suggest_expectations)

    from pipelines import audit_cli

    audit_cli.add_parser(sub)
    rollback = sub.add_parser("rollback", help="move the champion alias back to the previous champion")
    rollback.add_argument("--model", help="registered model name (default: the config's)")
    rollback.add_argument("--reason", default="manual rollback from the CLI")
    rollback.set_defaults(func=_cmd_rollback)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mlops`` command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.catalogue_model:
            _use_model(args.catalogue_model)
        return args.func(args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1 if exc.retryable else EXIT_NOT_RETRYABLE


if __name__ == "__main__":
    sys.exit(main())
