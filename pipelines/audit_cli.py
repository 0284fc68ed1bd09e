"""The ``mlops audit`` command: list the audit trail's events as a table or as JSON lines.

The events come from :func:`pipelines.audit.events` (the store); this module only parses the
command line and formats what it finds. :mod:`pipelines.cli` adds the command with
:func:`add_parser`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pipelines.audit import KINDS, VERSION_KEYS, events, parse_when
from pipelines.settings import Settings


def _when_arg(value: str) -> datetime:
    try:
        return parse_when(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``audit`` to the ``mlops`` command's subparsers; it runs :func:`command`."""
    parser = subparsers.add_parser("audit", help="show the audit trail: runs, decisions, approvals, rollouts")
    parser.add_argument("--model", help="registered model name (default: every model)")
    parser.add_argument("--since", type=_when_arg, help="from this UTC date or time (inclusive)")
    parser.add_argument("--until", type=_when_arg, help="up to this UTC date or time (exclusive)")
    parser.add_argument(
        "--kind", action="append", choices=KINDS, default=[], help="only this kind (repeatable)"
    )
    parser.add_argument("--version", help="only events about this model version")
    parser.add_argument("--run-key", help="only events of this run (dag_id/run_id)")
    parser.add_argument("--json", action="store_true", help="one JSON document per line")
    parser.set_defaults(func=command)
    return parser


def _cell(value: Any, width: int) -> str:
    text = "-" if value in (None, "") else " ".join(str(value).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def row(event: Mapping[str, Any]) -> list[str]:
    """The table cells of an event: time, kind, model, version, trigger, decision/reason, run."""
    details = event.get("details") or {}
    trigger = event.get("trigger") or {}
    versions = [str(details[k]) for k in VERSION_KEYS if details.get(k) is not None]
    if details.get("from_version") is not None and details.get("to_version") is not None:
        versions = [f"{details['from_version']}->{details['to_version']}"]
    said = [str(details[k]) for k in ("decision", "reason") if details.get(k) not in (None, "")]
    who = "/".join(str(p) for p in (trigger.get("type"), trigger.get("by")) if p) if trigger else ""
    when = parse_when(event["time"]).strftime("%Y-%m-%d %H:%M:%S")
    return [
        _cell(when, 19),
        _cell(event.get("kind"), 18),
        _cell(event.get("model"), 24),
        _cell(versions[0] if versions else None, 10),
        _cell(who, 48),
        _cell(": ".join(said), 60),
        _cell(event.get("run_key"), 60),
    ]


HEADER = ["time (UTC)", "kind", "model", "version", "trigger", "decision / reason", "run"]


def format_table(found: list[dict[str, Any]]) -> str:
    """The events as an aligned text table under :data:`HEADER`."""
    rows = [HEADER, *(row(e) for e in found)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def command(args: argparse.Namespace) -> int:
    """``mlops audit``: print the matching events as a table, or as JSON lines with ``--json``."""
    found = events(
        Settings.from_env(),
        model=args.model,
        since=args.since,
        until=args.until,
        kinds=args.kind or None,
        run_key=getattr(args, "run_key", None),
        version=args.version,
    )
    if args.json:
        for event in found:
            print(json.dumps(event, sort_keys=True))
    elif found:
        print(format_table(found))
    else:
        print("no audit events match", file=sys.stderr)
    return 0
