"""The whole backtest: the oracle, every policy and strategy, the triggers' trade-offs, as one document."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pipelines.backtest.policies import Policy, standard_policies
from pipelines.backtest.replay import Replay, Strategy
from pipelines.backtest.simulation import HARM_MARGIN, oracle, simulate
from pipelines.backtest.tradeoffs import panel, tradeoff
from pipelines.config import PipelineConfig


def configured_strategy(config: PipelineConfig) -> Strategy:
    """The strategy the pipeline is configured with (ingest window, training mode)."""
    return Strategy(config.ingest.window_months, config.training.mode)


def strategy_grid(config: PipelineConfig, windows: list[int | None]) -> list[Strategy]:
    """Stateless at every window, and stateful at the configured one."""
    grid = [Strategy(w) for w in windows]
    grid.append(Strategy(config.ingest.window_months, "stateful"))
    return list(dict.fromkeys(grid))


def run(
    config: PipelineConfig,
    *,
    first: str,
    last: str,
    windows: Sequence[int | None] = (3, 6, 12),
    policies: list[Policy] | None = None,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The whole backtest as a JSON-ready document (see the module docstring)."""
    started = time.perf_counter()
    progress(f"reading {config.dataset.name} and labelling it ...")
    replay = Replay(config, first=first, last=last)
    strategies = strategy_grid(config, list(windows))
    main = configured_strategy(config)
    progress(f"{len(replay.periods)} months ({first} .. {last}), {len(replay.history):,} labelled rows")
    progress(f"oracle: fitting {len(windows)} windows at every month boundary ...")
    best = oracle(replay, [s for s in strategies if s.mode == "stateless"])
    runs = []
    for policy in policies or standard_policies(config):
        progress(f"policy {policy.name!r} ({main.label}) ...")
        runs.append(simulate(replay, policy, main, best))
    compared = []
    for strategy in strategies:
        if strategy == main:
            continue
        for name in ("monthly", "configured"):
            policy = next(p for p in (policies or standard_policies(config)) if p.name == name)
            progress(f"strategy {strategy.label}: policy {name!r} ...")
            compared.append(simulate(replay, policy, strategy, best))
    progress("trigger trade-offs over every (model, later month) ...")
    curves = tradeoff(panel(replay, main, config.monitoring))
    configured = next(r for r in runs if r.policy.name == "configured")
    estimation_rows = [
        {"month": m["month"], "estimated_auc": m.get("estimated_auc"), "live_auc": m["live_auc"]}
        for m in configured.months
    ]
    errors = [
        abs(r["estimated_auc"] - r["live_auc"]) for r in estimation_rows if r["estimated_auc"] is not None
    ]
    return {
        "dataset": config.dataset.name,
        "replay": {"first": first, "last": last, "months": [p.name for p in replay.periods]},
        "strategy": main.label,
        "harm_margin": HARM_MARGIN,
        "oracle": dict(zip([p.name for p in replay.periods], best, strict=True)),
        "policies": [r.summary() | {"description": r.policy.description} for r in runs],
        "strategies": [r.summary() for r in compared],
        "months": {r.policy.name: r.months for r in runs},
        "tradeoff": curves,
        "estimation": {
            "months": estimation_rows,
            "mean_absolute_error": float(np.mean(errors)) if errors else None,
        },
        "fits": len(replay._fits),
        "seconds": round(time.perf_counter() - started, 1),
    }
