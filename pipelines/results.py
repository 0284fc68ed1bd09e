"""The contract between steps: each step's result (the JSON that travels as XCom) and its inputs.

Inputs are the results of the upstream steps a ``StepSpec`` names; a step that does not act returns
:class:`Skipped`. ``Status`` members become plain strings in JSON (they compare equal). Types only,
checked by ``pipelines.runner.check_result``; the one statement below makes undeclared keys errors.
"""

# No ``from __future__ import annotations``: under it Python 3.11 loses NotRequired at run time.
from typing import Any, Literal, NotRequired

# typing_extensions' TypedDict: pydantic (the runner's check) refuses typing's on Python < 3.12
from typing_extensions import TypedDict, is_typeddict

from pipelines.pipeline import Skipped, Status  # noqa: F401  (Skipped: part of the contract)


class Interval(TypedDict):
    """A half-open time range ``[start, end)`` as ISO 8601 strings."""

    start: str
    end: str


Metrics = dict[str, float | None]  # modeling.classification_metrics; roc_auc, pr_auc None: one class


class TrainingMode(TypedDict):
    """Whether train started from scratch or continued the champion."""

    mode: Literal["stateless", "stateful"]
    from_version: str | None  # the champion continued (stateful), else None


class RolloutPolicy(TypedDict):
    """The deployment policy of a started rollout (``Policy`` as JSON; set in full for a rollout)."""

    strategy: Literal["canary", "shadow", "ab"]
    challenger_version: str
    share: float
    rollout_id: str
    started_at: str
    sample_size: int
    test: dict[str, float | str]  # alpha, power, effect, baseline_error; inconclusive, champion_version


class DriftWindow(Interval):
    """The monitored window, the clock that placed rows in it, and where the rows came from."""

    clock: Literal["event_time", "ts"]
    source: Literal["prediction_log", "batch"]


class DriftSummary(TypedDict):
    """Covariate drift over the features (``monitoring.detect``'s ``drift``)."""

    status: str  # "drift", "ok" or "insufficient_data"
    share: float | None  # None when no feature could be judged
    weighted_share: float | None  # None without importances
    weighting: Literal["importance", "none"]
    drifted: int
    judged: int
    threshold_share: float
    drifted_features: list[str]


class LivePerformance(TypedDict):
    """Realised performance against the baseline (``monitoring._performance``); shapes noted below."""

    status: str  # "ok", "decay" or "insufficient_data"
    metric: str
    labelled_rows: int
    training: float | None
    baseline_kind: Literal["first_window", "test"]
    max_drop: float
    alpha: float
    min_labelled_rows: int
    served_share: float | None  # the champion's share of the window's traffic (shadow answers aside)
    live: float | None
    drop: float | None
    # too few labels: + reason. First judged window: + counts, baseline None, new_baseline, reason.
    # Compared with the baseline: + counts, baseline and the test's standard_error, z, p_value.
    counts: NotRequired[list[int]]
    baseline: NotRequired[float | None]
    new_baseline: NotRequired[dict[str, float | list[int] | None]]  # value, counts, estimated
    reason: NotRequired[str]
    standard_error: NotRequired[float]
    z: NotRequired[float]
    p_value: NotRequired[float]


class RetrainEventExtra(TypedDict):
    """The extra of the retrain Asset event; training reads ``interval_end`` from it."""

    source: Literal["monitoring"]
    interval_end: str
    report_uri: str
    drifted_features: list[str]
    drift_share: float | None
    performance: LivePerformance
    champion_version: str
    monitoring_run_id: str


class IngestResult(TypedDict):
    """The labelled training snapshot: its URI, size, columns and content hash (data version)."""

    snapshot_uri: str
    rows: int
    rows_in_interval: int
    dropped_unlabelled: int
    data_hash: str
    columns: list[str]
    interval: Interval  # the run's data interval
    window: Interval  # the training window (window_months back from the interval's end)


class ValidateResult(TypedDict):
    """The data passed the expectation suite (a failure raises instead of returning)."""

    passed: bool  # always True
    expectations: int
    reference_model_version: int | str | None  # ModelVersion.version as is: int from a SQL registry
    report_uri: str
    data_docs_uri: str
    inferred_suite_uri: NotRequired[str]  # the config names no suite: the one inferred from this data


class TrainResult(TypedDict):
    """The logged model, its threshold and validation metrics, and the files later steps read."""

    mlflow_run_id: str
    model_uri: str
    model_sha256: str
    estimator: str
    best_params: dict[str, Any]  # the search's best hyperparameters; {} without a search
    threshold: float
    validation: Metrics  # every metric of modeling.classification_metrics, rows included
    rows: dict[str, int]  # train, validation, test
    test_uri: str
    reference_profile_uri: str
    reference_uri: str
    monitoring_profile_uri: str
    training_mode: TrainingMode
    data_hash: str


class EvaluateResult(TypedDict):
    """The gate's decision on the candidate, against the champion when there is one."""

    passed: bool
    reason: str
    approval_required: bool
    approval_reason: str | None
    fairness_passed: bool
    metrics: Metrics
    champion_version: str | None  # None: no champion yet
    champion_metrics: Metrics | None
    evaluation_uri: str
    report_uri: str


class RegisterResult(TypedDict):
    """The registry version made (or found again on a retry) and its aliases."""

    status: Status  # Status.REGISTERED
    registered: bool  # always True (a rejected candidate gives Skipped)
    created: bool
    model_name: str
    version: str
    aliases: list[str]
    model_uri: str
    model_card: dict[str, str | int | dict[str, str]]  # model_card.publish: URIs, tag, description_bytes
    approval_reason: str | None


class IngestBatchResult(TypedDict):
    """The unlabelled snapshot of the interval's rows to score."""

    snapshot_uri: str
    rows: int
    labelled: bool  # always False: validate drops the label's expectations
    data_hash: str
    columns: list[str]
    interval: Interval


class ScoreResult(TypedDict):
    """The champion's predictions for the batch."""

    predictions_uri: str
    rows: int
    model_name: str
    model_version: str
    positive_rate: float
    seconds: float


class ValidateServingResult(TypedDict):
    """The candidate served correctly and fast enough in a sandbox."""

    status: Status  # Status.PASSED
    model_name: str
    version: str
    runtime: str  # the server's runtime for it, e.g. "sklearn" or "lean-hgb"
    rows_checked: int
    max_abs_diff: float
    p50_ms: float
    p95_ms: float
    concurrent_requests: int  # answered correctly with deploy.infra_concurrency clients at once
    concurrent_p95_ms: float
    peak_rss_mb: float | None  # the sandbox's peak resident memory (None where /proc is not there)
    approval_reason: str | None  # the version's approval.reason tag: a person must approve


class StartRolloutResult(TypedDict):
    """The rollout as started: promoted at once (direct), or a policy with a fixed test."""

    model_name: str
    version: str
    strategy: Literal["direct", "canary", "shadow", "ab"]
    decided: bool  # True: direct (or a first champion), with decision and reason; False: a policy
    decision: NotRequired[Literal["promote"]]
    reason: NotRequired[str]
    policy: NotRequired[RolloutPolicy]


class AnalyseRolloutResult(TypedDict):
    """The rollout's verdict, or its progress (polled until ``status`` is decided)."""

    status: Status  # Status.WAITING or Status.DECIDED
    decision: str | None  # "promote", "abort" or "ended"; None while waiting
    reason: str
    # direct or ended elsewhere: the keys above; timed out: + progress; else + rollout_id, version,
    # progress (labelled_/served_ per arm or _pairs/_shadow), once decided test..alpha (z or only_*)
    rollout_id: NotRequired[str]
    version: NotRequired[str]  # the policy's challenger (a rollout's policy always names one)
    sample_size: NotRequired[int]
    labelled_champion: NotRequired[int]
    labelled_challenger: NotRequired[int]
    served_champion: NotRequired[int]
    served_challenger: NotRequired[int]
    labelled_pairs: NotRequired[int]
    served_shadow: NotRequired[int]
    test: NotRequired[str]
    error_rate_champion: NotRequired[float]
    error_rate_challenger: NotRequired[float]
    z: NotRequired[float]
    only_champion_right: NotRequired[int]
    only_challenger_right: NotRequired[int]
    p_value: NotRequired[float]
    alpha: NotRequired[float]


class ConcludeRolloutResult(TypedDict):
    """The verdict applied to the registry, and the report."""

    model_name: str
    version: str
    decision: str | None
    reason: str
    report_uri: str
    champion: NotRequired[str | None]  # direct, promote, abort (None: abort with no champion alias)
    previous: NotRequired[str | None]  # promote
    aborted: NotRequired[str]  # abort
    note: NotRequired[str]  # any other decision ("ended")


class RollbackResult(TypedDict):
    """``deploy.rollback``: the champion alias went back to the previous version."""

    champion: str
    rolled_back_from: str | None
    reason: str


class DetectDriftResult(TypedDict):
    """One window's monitoring verdicts, with the full report's location."""

    model_name: str
    champion_version: str
    window: DriftWindow
    report_uri: str
    html_uri: str
    rows: dict[str, int]  # window, champion (answered by it), labelled
    drift: DriftSummary
    performance: LivePerformance
    # CBPE: status, reason | roc_auc, error_rate, reference, drop, max_drop (+ realised, error)
    estimated: dict[str, float | str | None]
    explanation: list[str]  # one line per trigger
    prediction_drift: str | None  # the prediction column's status; None when not compared
    label_drift: str | None


class DecideRetrainResult(TypedDict):
    """A retrain request (``retrain`` is always True here: no request gives Skipped)."""

    retrain: bool
    reason: str
    model_name: str
    champion_version: str
    report_uri: str
    html_uri: str
    event_extra: RetrainEventExtra


class MaterializeFeaturesResult(TypedDict):
    """Offline tables built up to the interval's end, the online store loaded."""

    status: Status  # Status.MATERIALIZED
    offline_rows: dict[str, int]  # rows per offline table
    project: str
    start: str  # the loaded range: the interval less the longest TTL, to its end
    end: str


class NoInputs(TypedDict):
    """The inputs of a step no upstream step feeds: always ``{}`` (empty, so nothing else fits)."""


class ValidateInputs(TypedDict, total=False):
    """Training feeds ``ingest``, batch inference ``ingest_batch``: exactly one is present."""

    ingest: IngestResult
    ingest_batch: IngestBatchResult


class TrainInputs(TypedDict):
    """The inputs of train."""

    ingest: IngestResult
    validate: ValidateResult


class EvaluateInputs(TypedDict):
    """The inputs of evaluate."""

    ingest: IngestResult
    train: TrainResult


class RegisterInputs(EvaluateInputs):
    """The inputs of register."""

    evaluate: EvaluateResult


class StartRolloutInputs(TypedDict):
    """The inputs of start_rollout."""

    validate_serving: ValidateServingResult


class AnalyseRolloutInputs(TypedDict):
    """The inputs of analyse_rollout."""

    start_rollout: StartRolloutResult


class ConcludeRolloutInputs(AnalyseRolloutInputs):
    """The inputs of conclude_rollout."""

    analyse_rollout: AnalyseRolloutResult


class ScoreInputs(TypedDict):
    """The inputs of score."""

    ingest_batch: IngestBatchResult
    validate: ValidateResult


class DecideRetrainInputs(TypedDict):
    """The inputs of decide_retrain."""

    detect_drift: DetectDriftResult


# step name -> the TypedDict of its result when it acts (any step may also return Skipped)
RESULT_TYPES: dict[str, type] = {
    "ingest": IngestResult, "validate": ValidateResult, "train": TrainResult, "evaluate": EvaluateResult,
    "register": RegisterResult, "validate_serving": ValidateServingResult,
    "start_rollout": StartRolloutResult, "analyse_rollout": AnalyseRolloutResult,
    "conclude_rollout": ConcludeRolloutResult, "rollback": RollbackResult,
    "ingest_batch": IngestBatchResult, "score": ScoreResult, "detect_drift": DetectDriftResult,
    "decide_retrain": DecideRetrainResult, "materialize_features": MaterializeFeaturesResult,
}  # fmt: skip

# step name -> the TypedDict of its inputs, keyed by the upstream steps of its StepSpec
INPUT_TYPES: dict[str, type] = {
    "ingest": NoInputs, "validate": ValidateInputs, "train": TrainInputs, "evaluate": EvaluateInputs,
    "register": RegisterInputs, "validate_serving": NoInputs, "start_rollout": StartRolloutInputs,
    "analyse_rollout": AnalyseRolloutInputs, "conclude_rollout": ConcludeRolloutInputs,
    "rollback": NoInputs, "ingest_batch": NoInputs, "score": ScoreInputs, "detect_drift": NoInputs,
    "decide_retrain": DecideRetrainInputs, "materialize_features": NoInputs,
}  # fmt: skip

# A key that a type does not declare breaks the contract as much as a missing one: the runner's
# check (pydantic, ``pipelines.runner.check_result``) refuses both.
for _type in [value for value in list(globals().values()) if is_typeddict(value)]:
    setattr(_type, "__pydantic_config__", {"extra": "forbid"})  # noqa: B010
