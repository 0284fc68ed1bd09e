"""Policy backtest: replay a dataset's months under retraining policies, in process, side by side.

Each policy serves the months ``first..last`` one after the other. At the end of
a month its trigger looks at the month (the project's own ``monitoring.detect``
and ``retrain_decision``, or a fixed schedule); a retrain fits the configured
strategy on the window ending there (``modeling``), the gate decides against
the champion on the candidate's test split (``gate.decide``), and the rollout
serves it: ``direct`` from the next month, ``canary``/``ab`` to a share of the
next month and then by the online test of ``pipelines.rollout`` at the month's
end, ``shadow`` to nobody until that test. Fits are cached, so ten policies
cost a few dozen fits, not hundreds.

What is reported, per policy: live ROC AUC and log loss per month (what the
users got), retrains, training compute, months served by a model worse than the
best available (the oracle: for each month the best of every model any policy
could have had, i.e. every strategy's fit on every earlier month boundary), and
alarms judged against realised harm: an alarm at the end of month ``i``
predicted harm when the serving model's AUC on month ``i+1`` is more than
``margin`` below a fresh retrain's on that month.

A trigger's trade-off curve (precision and recall over its threshold) comes
from a panel: every stateless fit of the strategy serving every later month.
Nothing here needs Airflow, MLflow or a server.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.metrics import log_loss, roc_auc_score

from pipelines import drift, gate, modeling, monitoring, rollout, sources
from pipelines.config import Monitoring, PipelineConfig
from pipelines.errors import ConfigError, DataError

log = logging.getLogger(__name__)
HARM_MARGIN = 0.01  # an alarm predicted harm when the served model is this far below a fresh retrain


@dataclass(frozen=True)
class Strategy:
    """How a model is (re)trained: the window (months; None is all history) and the mode."""

    window_months: int | None
    mode: Literal["stateless", "stateful"] = "stateless"

    @property
    def label(self) -> str:
        window = "all history" if self.window_months is None else f"{self.window_months} months"
        return f"{window}, {self.mode}"


@dataclass
class Model:
    """One fit: the pipeline and what the gate and monitoring need from training."""

    key: tuple
    pipeline: Any
    until: pd.Timestamp
    fit_seconds: float
    threshold: float
    test_x: pd.DataFrame
    test_y: np.ndarray
    test: dict[str, Any]  # {"value": test ROC AUC, "counts": [positives, negatives]}
    reference: drift.Reference
    profile: dict[str, Any]


@dataclass(frozen=True)
class Period:
    name: str
    start: pd.Timestamp
    end: pd.Timestamp
    frame: pd.DataFrame  # model input columns
    y: np.ndarray


def month_starts(first: str, last: str, tz: str) -> list[pd.Timestamp]:
    """Local midnights of the first day of each month from ``first`` to ``last`` (YYYY-MM), inclusive."""
    start, stop = pd.Timestamp(f"{first}-01", tz=tz), pd.Timestamp(f"{last}-01", tz=tz)
    if stop < start:
        raise ConfigError(f"the replay ends ({last}) before it starts ({first})")
    out = [start]
    while out[-1] < stop:
        out.append(out[-1] + pd.DateOffset(months=1))
    return out


class Replay:
    """The dataset's history, read once, its months as periods, and a cache of fits and scores."""

    def __init__(self, config: PipelineConfig, *, first: str, last: str, history_start: str | None = None):
        self.config, self.dataset = config, config.dataset
        tz = config.schedule.timezone
        starts = month_starts(first, last, tz)
        ends = [*starts[1:], starts[-1] + pd.DateOffset(months=1)]
        begin = pd.Timestamp(history_start or config.schedule.start_date, tz=tz)
        raw = sources.read_window(self.dataset, begin.tz_convert("UTC"), ends[-1].tz_convert("UTC"))
        from pipelines.dataset import label_frame

        labelled, _ = label_frame(raw, self.dataset)
        time_col = self.dataset.time_column
        labelled[time_col] = pd.to_datetime(labelled[time_col], utc=True)
        self.history = labelled.sort_values(time_col, kind="stable").reset_index(drop=True)
        self.begin = begin.tz_convert("UTC")
        self.periods: list[Period] = []
        for start, end in zip(starts, ends, strict=True):
            rows = self._between(start.tz_convert("UTC"), end.tz_convert("UTC"))
            if len(rows) == 0:
                raise DataError(f"no labelled rows in {start:%Y-%m}: the replay needs data in every month")
            x, y = modeling.features_and_label(rows, self.dataset)
            self.periods.append(
                Period(f"{start:%Y-%m}", start.tz_convert("UTC"), end.tz_convert("UTC"), x, y)
            )
        self._fits: dict[tuple, Model] = {}
        self._scores: dict[tuple, np.ndarray] = {}

    def _between(self, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        times = self.history[self.dataset.time_column]
        lo, hi = times.searchsorted(start, side="left"), times.searchsorted(end, side="left")
        return self.history.iloc[lo:hi]

    def window(self, strategy: Strategy, until: pd.Timestamp) -> pd.DataFrame:
        """The training rows of ``strategy`` ending at ``until`` (counted in the dataset's timezone)."""
        if strategy.window_months is None:
            return self._between(self.begin, until)
        local = until.tz_convert(self.config.schedule.timezone)
        return self._between((local - pd.DateOffset(months=strategy.window_months)).tz_convert("UTC"), until)

    def fit(self, strategy: Strategy, until: pd.Timestamp, parent: Model | None = None) -> Model:
        """The model ``strategy`` trains on the window ending at ``until`` (stateful: from ``parent``)."""
        stateful = strategy.mode == "stateful" and parent is not None
        key = (strategy, until, parent.key if stateful else None)
        if key in self._fits:
            return self._fits[key]
        training = self.config.training
        frame = self.window(strategy, until)
        splits = modeling.time_split(
            frame, self.dataset.time_column, training.validation_fraction, training.test_fraction
        )
        x_train, y_train = modeling.features_and_label(splits.train, self.dataset)
        x_val, y_val = modeling.features_and_label(splits.validation, self.dataset)
        x_test, y_test = modeling.features_and_label(splits.test, self.dataset)
        started = time.perf_counter()
        if stateful:
            model = modeling.continue_training(
                parent.pipeline, x_train, y_train, training.warm_start_iterations
            )
        else:
            model = modeling.build_pipeline(self.dataset, training).fit(x_train, y_train)
        seconds = time.perf_counter() - started
        threshold = modeling.best_f1_threshold(y_val, model.predict_proba(x_val)[:, 1])
        auc = _auc(y_test, model.predict_proba(x_test)[:, 1])
        positives = int(y_test.sum())
        sample = modeling.reference_sample(
            frame, self.dataset, model, self.config.monitoring.drift.reference_rows, training.random_state
        )
        rules = monitoring.column_rules(self.dataset, self.config.monitoring.drift)
        reference = drift.Reference.from_frame(
            sample, {c: r.kind for c, r in rules.items()}, self.config.monitoring.drift.psi_bins
        )
        profile = monitoring.training_profile(
            model, splits.test, self.dataset, threshold, training.random_state
        )
        fitted = Model(
            key, model, until, seconds, threshold, x_test, y_test,
            {"value": auc, "counts": [positives, len(y_test) - positives]}, reference, profile,
        )  # fmt: skip
        self._fits[key] = fitted
        log.info(
            "fit %s until %s: %d rows, %.1fs, test ROC AUC %.4f",
            strategy.label,
            until,
            len(frame),
            seconds,
            auc,
        )
        return fitted

    def proba(self, model: Model, i: int) -> np.ndarray:
        """The model's probabilities for period ``i`` (cached)."""
        key = (model.key, i)
        if key not in self._scores:
            self._scores[key] = model.pipeline.predict_proba(self.periods[i].frame)[:, 1]
        return self._scores[key]

    def auc(self, model: Model, i: int) -> float:
        return _auc(self.periods[i].y, self.proba(model, i))


def _auc(y: np.ndarray, proba: np.ndarray) -> float:
    return float(roc_auc_score(y, proba)) if len(np.unique(y)) == 2 else math.nan


# -- policies -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """When to retrain: never, every ``every`` months, or when ``monitoring`` says so."""

    name: str
    kind: Literal["never", "schedule", "monitor"]
    every: int = 1
    monitoring: Monitoring | None = None
    description: str = ""


def standard_policies(config: PipelineConfig) -> list[Policy]:
    """The policies compared by default: baselines, the old rule, each trigger alone, the configured one."""
    m = config.monitoring

    def only(**retrain: Any) -> Monitoring:
        flags = {"on_drift": False, "on_decay": False, "on_estimated_decay": False, "mode": "retrain"}
        return m.model_copy(update={"retrain": m.retrain.model_copy(update={**flags, **retrain})})

    old_rule = m.model_copy(
        update={
            "drift": m.drift.model_copy(update={"weighting": "none", "share": 0.3}),
            "performance": m.performance.model_copy(
                update={"baseline": "test", "max_drop": 0.05, "alpha": 0.499}
            ),
            "retrain": m.retrain.model_copy(
                update={"on_drift": True, "on_decay": True, "on_estimated_decay": False, "mode": "retrain"}
            ),
        }
    )
    weighted = only(on_drift=True)
    return [
        Policy("never", "never", description="the first champion serves every month"),
        Policy("monthly", "schedule", 1, description="retrain every month (a cron)"),
        Policy("quarterly", "schedule", 3, description="retrain every third month"),
        Policy(
            "drift-or-decay (old rule)",
            "monitor",
            monitoring=old_rule,
            description="30% of features drifted, or live AUC 0.05 below the in-window test score",
        ),
        Policy(
            "importance-weighted drift",
            "monitor",
            monitoring=weighted,
            description=f"importance-weighted drift share >= {m.drift.share}",
        ),
        Policy(
            "estimated decay (CBPE)",
            "monitor",
            monitoring=only(on_estimated_decay=True),
            description=f"label-free estimated ROC AUC drop > {m.performance.max_estimated_drop}",
        ),
        Policy(
            "significant decay",
            "monitor",
            monitoring=only(on_decay=True),
            description=(
                f"live AUC below the first served month by > {m.performance.max_drop},"
                f" p < {m.performance.alpha}"
            ),
        ),
        Policy("configured", "monitor", monitoring=m, description="monitoring.* as configured"),
    ]


@dataclass
class PolicyRun:
    """What one policy did, month by month."""

    policy: Policy
    strategy: Strategy
    months: list[dict[str, Any]] = field(default_factory=list)
    retrains: int = 0
    fit_seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        aucs = [m["live_auc"] for m in self.months if not math.isnan(m["live_auc"])]
        losses = [m["live_log_loss"] for m in self.months]
        alarms = [m for m in self.months if m["alarm"]]
        judged = [m for m in self.months if m.get("harm_next") is not None]
        hits = sum(1 for m in judged if m["alarm"] and m["harm_next"])
        harms = sum(1 for m in judged if m["harm_next"])
        raised = sum(1 for m in judged if m["alarm"])
        return {
            "policy": self.policy.name,
            "strategy": self.strategy.label,
            "mean_live_auc": float(np.mean(aucs)) if aucs else math.nan,
            "mean_log_loss": float(np.mean(losses)) if losses else math.nan,
            "retrains": self.retrains,
            "fit_seconds": round(self.fit_seconds, 1),
            "months_below_best": sum(1 for m in self.months if m["below_best"]),
            "alarms": len(alarms),
            "alarm_precision": hits / raised if raised else None,
            "alarm_recall": hits / harms if harms else None,
        }


def _window_frame(period: Period, served: np.ndarray, versions: np.ndarray, target: str) -> pd.DataFrame:
    frame = period.frame.copy()
    frame[modeling.PREDICTION_COLUMN] = served
    frame[target] = period.y.astype(float)
    frame["model_version"], frame["route"] = versions, "champion"
    return frame.reset_index(drop=True)


def _rollout_verdict(
    config: PipelineConfig, y: np.ndarray, champion: np.ndarray, challenger: np.ndarray, thresholds: tuple
) -> str:
    """The online test at the end of the challenger's first month (pipelines.rollout's z-test)."""
    wrong_a = (champion >= thresholds[0]).astype(int) != y
    wrong_b = (challenger >= thresholds[1]).astype(int) != y
    if len(wrong_a) == 0 or len(wrong_b) == 0:
        return config.deploy.rollout.inconclusive
    _, p = rollout.two_proportion_test(int(wrong_a.sum()), len(wrong_a), int(wrong_b.sum()), len(wrong_b))
    if p < config.deploy.rollout.alpha:
        return "promote" if wrong_b.mean() < wrong_a.mean() else "abort"
    return config.deploy.rollout.inconclusive


def simulate(replay: Replay, policy: Policy, strategy: Strategy, oracle: list[float]) -> PolicyRun:
    """Serve every month under ``policy``; retrain with ``strategy``; gate and roll out as configured."""
    config, target = replay.config, replay.dataset.target.name
    periods = replay.periods
    run = PolicyRun(policy, strategy)
    champion = replay.fit(strategy, periods[0].start)
    challenger: Model | None = None
    baseline: dict[str, Any] | None = None
    last_request: dict[str, Any] | None = None
    rollout_kind = config.deploy.rollout.strategy
    share = config.deploy.rollout.share or 0.1
    arm = np.random.default_rng(config.training.random_state)
    for i, period in enumerate(periods):
        champ_p = replay.proba(champion, i)
        served, versions = champ_p.copy(), np.full(len(champ_p), "champion", dtype=object)
        verdict = None
        if challenger is not None:
            chall_p = replay.proba(challenger, i)
            canary = arm.random(len(champ_p)) < (0.0 if rollout_kind == "shadow" else share)
            served[canary], versions[canary] = chall_p[canary], "challenger"
            if rollout_kind == "shadow":  # both scored every row; the challenger answered nobody
                verdict = _rollout_verdict(
                    config, period.y, champ_p, chall_p, (champion.threshold, challenger.threshold)
                )
            else:
                verdict = _canary_test(config, period.y, canary, champ_p, chall_p, champion, challenger)
        live_auc = _auc(period.y, served)
        row: dict[str, Any] = {
            "month": period.name,
            "serving": _age(champion, periods),
            "live_auc": live_auc,
            "live_log_loss": float(log_loss(period.y, np.clip(served, 1e-6, 1 - 1e-6), labels=[0, 1])),
            "oracle_auc": oracle[i],
            "below_best": live_auc < oracle[i] - HARM_MARGIN,
            "rollout": verdict,
        }
        if challenger is not None:
            if verdict == "promote":  # from now on the challenger's rows are the champion's
                champion, baseline = challenger, None
                versions = np.where(versions == "challenger", "champion", "previous")
            challenger = None
        # the end of the month: does the trigger fire?
        alarm, reason, report = _trigger(replay, policy, champion, i, served, versions, baseline, target)
        if report is not None:
            new_baseline = report["performance"].get("new_baseline")
            if new_baseline and baseline is None:
                baseline = {**new_baseline, "value": new_baseline["value"]}
            decision = monitoring.retrain_decision(
                report, last_request, policy.monitoring.retrain, window_end=period.end, run_id=f"m{i}"
            )
            retrain = decision["retrain"]
            if retrain:
                last_request = {
                    "requested_at": period.end.isoformat(), "champion_version": report["champion_version"],
                    "run_id": f"m{i}",
                }  # fmt: skip
            row |= {
                "estimated_auc": report["estimated"].get("roc_auc"),
                "weighted_drift": report["drift"].get("weighted_share"),
                "drift_share": report["drift"].get("share"),
            }
        else:
            retrain = alarm
        row |= {"alarm": alarm, "reason": reason}
        if i + 1 < len(periods):
            fresh = replay.fit(strategy, period.end, champion if strategy.mode == "stateful" else None)
            row["harm_next"] = replay.auc(champion, i + 1) < replay.auc(fresh, i + 1) - HARM_MARGIN
        if retrain and i + 1 < len(periods):
            champion, challenger, outcome = _retrain(replay, strategy, champion, period.end, run)
            row["retrain"] = outcome
        run.months.append(row)
    return run


def _canary_test(config, y, canary, champ_p, chall_p, champion: Model, challenger: Model) -> str:
    """Canary / A-B: the champion's arm against the challenger's arm, as the rollout analyses them."""
    wrong_a = (champ_p[~canary] >= champion.threshold).astype(int) != y[~canary]
    wrong_b = (chall_p[canary] >= challenger.threshold).astype(int) != y[canary]
    if len(wrong_a) == 0 or len(wrong_b) == 0:
        return config.deploy.rollout.inconclusive
    _, p = rollout.two_proportion_test(int(wrong_a.sum()), len(wrong_a), int(wrong_b.sum()), len(wrong_b))
    if p < config.deploy.rollout.alpha:
        return "promote" if wrong_b.mean() < wrong_a.mean() else "abort"
    return config.deploy.rollout.inconclusive


def _age(model: Model, periods: list[Period]) -> str:
    return f"fit to {model.until.tz_convert(periods[0].start.tz):%Y-%m-%d}"


def _trigger(
    replay: Replay,
    policy: Policy,
    champion: Model,
    i: int,
    served: np.ndarray,
    versions: np.ndarray,
    baseline: dict[str, Any] | None,
    target: str,
) -> tuple[bool, str, dict[str, Any] | None]:
    """(did the trigger fire, why, the monitoring report) at the end of month ``i``."""
    if policy.kind == "never":
        return False, "never retrains", None
    if policy.kind == "schedule":
        due = (i + 1) % policy.every == 0
        return due, f"schedule: every {policy.every} month(s){'' if due else ', not due'}", None
    window = _window_frame(replay.periods[i], served, versions, target)
    report = monitoring.detect(
        champion.reference, window, dataset=replay.dataset, config=policy.monitoring,
        champion_version="champion", training=champion.test, profile=champion.profile, baseline=baseline,
    )  # fmt: skip
    fired = monitoring.retrain_decision(
        report, None, policy.monitoring.retrain, window_end=replay.periods[i].end, run_id="probe"
    )
    alarm = bool(fired["retrain"] or fired.get("notify"))
    return alarm, fired["reason"] if alarm else "; ".join(monitoring.explain(report)), report


def _retrain(
    replay: Replay, strategy: Strategy, champion: Model, until: pd.Timestamp, run: PolicyRun
) -> tuple[Model, Model | None, str]:
    """Fit, gate against the champion on the candidate's test split, start the rollout."""
    config = replay.config
    candidate = replay.fit(strategy, until, champion if strategy.mode == "stateful" else None)
    run.retrains += 1
    run.fit_seconds += candidate.fit_seconds
    y = candidate.test_y
    new = modeling.classification_metrics(
        y, candidate.pipeline.predict_proba(candidate.test_x)[:, 1], candidate.threshold
    )
    old = modeling.classification_metrics(
        y, champion.pipeline.predict_proba(candidate.test_x)[:, 1], champion.threshold
    )
    decision = gate.decide(config.gate, new, old)
    if not decision["passed"]:
        return champion, None, f"rejected: {decision['reason']}"
    if config.deploy.rollout.strategy == "direct":
        return candidate, None, "promoted"
    return champion, candidate, f"{config.deploy.rollout.strategy} started"


def oracle(replay: Replay, strategies: list[Strategy]) -> list[float]:
    """For each month, the best live ROC AUC of any stateless fit on an earlier month boundary."""
    best = []
    for i in range(len(replay.periods)):
        scores = [
            replay.auc(replay.fit(Strategy(s.window_months), replay.periods[b].start), i)
            for s in strategies
            for b in range(i + 1)
        ]
        best.append(float(np.nanmax(scores)))
    return best


# -- the trade-off of each trigger ----------------------------------------------------------------

SCORES = {  # trigger -> (score in the report, threshold grid); the alarm is score >= threshold
    "importance-weighted drift": ("weighted_drift", np.round(np.arange(0.0, 0.61, 0.05), 2)),
    "unweighted drift share": ("drift_share", np.round(np.arange(0.0, 0.81, 0.05), 2)),
    "estimated AUC drop (CBPE)": ("estimated_drop", np.round(np.arange(-0.02, 0.061, 0.005), 3)),
    "realised AUC drop vs first month": ("decay_drop", np.round(np.arange(-0.02, 0.061, 0.005), 3)),
}


def panel(replay: Replay, strategy: Strategy, config: Monitoring) -> list[dict[str, Any]]:
    """Every stateless fit of ``strategy`` serving every later month: the triggers' scores and the harm."""
    periods, target = replay.periods, replay.dataset.target.name
    rows = []
    for b in range(len(periods) - 1):
        model = replay.fit(Strategy(strategy.window_months), periods[b].start)
        baseline = None
        for i in range(b, len(periods) - 1):
            proba = replay.proba(model, i)
            window = _window_frame(periods[i], proba, np.full(len(proba), "m", dtype=object), target)
            report = monitoring.detect(
                model.reference, window, dataset=replay.dataset, config=config, champion_version="m",
                training=model.test, profile=model.profile, baseline=baseline,
            )  # fmt: skip
            perf, est = report["performance"], report["estimated"]
            if perf.get("new_baseline"):
                baseline = perf["new_baseline"]
            fresh = replay.fit(Strategy(strategy.window_months), periods[i].end)
            rows.append(
                {
                    "trained_to": periods[b].name, "month": periods[i].name, "age": i - b,
                    "weighted_drift": report["drift"]["weighted_share"],
                    "drift_share": report["drift"]["share"],
                    "estimated_drop": est.get("drop"),
                    "decay_drop": perf.get("drop"),
                    "decay_p": perf.get("p_value"),
                    "auc_next": replay.auc(model, i + 1),
                    "fresh_auc_next": replay.auc(fresh, i + 1),
                    "harm": replay.auc(model, i + 1) < replay.auc(fresh, i + 1) - HARM_MARGIN,
                }
            )  # fmt: skip
    return rows


def tradeoff(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Precision and recall of each trigger against realised harm, over its threshold grid."""
    harms = sum(1 for r in rows if r["harm"])
    curves: dict[str, Any] = {}
    for name, (column, grid) in SCORES.items():
        points = []
        for threshold in grid:
            fired = [r for r in rows if r[column] is not None and r[column] >= threshold]
            hits = sum(1 for r in fired if r["harm"])
            precision = hits / len(fired) if fired else None
            recall = hits / harms if harms else None
            points.append(
                {
                    "threshold": float(threshold),
                    "alarms": len(fired),
                    "precision": precision,
                    "recall": recall,
                }
            )
        curves[name] = {"column": column, "points": points, "best": _best_point(points)}
    return {"situations": len(rows), "harmful": harms, "margin": HARM_MARGIN, "curves": curves}


def _best_point(points: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Precision and recall both >= 0.8 when the data allows (highest threshold); else the best F1."""
    scored = [p for p in points if p["precision"] is not None and p["recall"] is not None]
    good = [p for p in scored if p["precision"] >= 0.8 and p["recall"] >= 0.8]
    if good:
        return {**max(good, key=lambda p: p["threshold"]), "meets_target": True}

    def f1(p: dict[str, Any]) -> float:
        total = p["precision"] + p["recall"]
        return 2 * p["precision"] * p["recall"] / total if total else 0.0

    return {**max(scored, key=f1), "meets_target": False} if scored else None


# -- the whole backtest ---------------------------------------------------------------------------


def configured_strategy(config: PipelineConfig) -> Strategy:
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
    windows: list[int | None] = (3, 6, 12),
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


def _f(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def table_text(result: dict[str, Any]) -> str:
    """The policies side by side, the strategies, the trade-off and the estimate's error, as text."""
    head = (
        f"{'policy':30} {'mean AUC':>8} {'log loss':>8} {'retrains':>8} {'fit s':>6} {'<best':>5}"
        f" {'alarms':>6} {'prec':>5} {'recall':>6}"
    )
    replay = result["replay"]
    lines = [
        f"{result['dataset']}: {replay['first']} .. {replay['last']}, retraining {result['strategy']}",
        head,
        "-" * len(head),
    ]
    oracle_mean = float(np.mean(list(result["oracle"].values())))
    for p in result["policies"]:
        lines.append(
            f"{p['policy']:30} {_f(p['mean_live_auc']):>8} {_f(p['mean_log_loss']):>8} {p['retrains']:>8}"
            f" {p['fit_seconds']:>6.1f} {p['months_below_best']:>5} {p['alarms']:>6}"
            f" {_f(p['alarm_precision'], '.2f'):>5} {_f(p['alarm_recall'], '.2f'):>6}"
        )
    lines.append(f"{'oracle (best model each month)':30} {oracle_mean:>8.3f}")
    if result["strategies"]:
        lines += ["", f"{'training strategy':28} {'policy':12} {'mean AUC':>8} {'retrains':>8} {'fit s':>6}"]
        for s in result["strategies"]:
            lines.append(
                f"{s['strategy']:28} {s['policy']:12} {_f(s['mean_live_auc']):>8} {s['retrains']:>8}"
                f" {s['fit_seconds']:>6.1f}"
            )
    t = result["tradeoff"]
    lines += [
        "",
        f"trigger vs realised harm (live AUC > {t['margin']} below a fresh retrain next month),"
        f" {t['situations']} (model, month) situations, {t['harmful']} harmful:",
    ]
    for name, curve in t["curves"].items():
        b = curve["best"]
        if b:
            lines.append(
                f"  {name:36} best threshold {b['threshold']:<6g} precision {_f(b['precision'], '.2f')}"
                f" recall {_f(b['recall'], '.2f')} ({b['alarms']} alarms)"
                + ("" if b["meets_target"] else " (below 0.8/0.8)")
            )
    e = result["estimation"]
    lines.append("")
    lines.append(
        "estimated (CBPE, before labels) vs realised live ROC AUC:"
        f" mean absolute error {_f(e['mean_absolute_error'])}"
    )
    lines.append(
        "  " + "  ".join(f"{r['month']} {_f(r['estimated_auc'])}/{_f(r['live_auc'])}" for r in e["months"])
    )
    lines.append(f"{result['fits']} fits, {result['seconds']} s")
    return "\n".join(lines)
