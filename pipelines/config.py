"""Pipeline configuration: the dataset, the training recipe, the gate and the registry.

A dataset is configuration, not code: a user points the pipeline at their own
table with one YAML file (``MLOPS_CONFIG``). The bundled NYC flights dataset is
simply the default file, ``pipelines/datasets/flights.yaml``.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from pipelines.errors import ConfigError
from pipelines.run_parameters import RUN_PARAMETERS  # the overridable fields, declared once
from pipelines.util import Strict


class Join(Strict):
    """A lookup table joined onto every ingested row (e.g. weather by origin and hour)."""

    uri: str
    keys: list[str]
    columns: list[str]
    format: Literal["csv", "parquet"] | None = None


class Source(Strict):
    """Where raw rows come from: a file (local path, ``package://`` or any fsspec URL) or SQL."""

    kind: Literal["file", "sql"]
    uri: str | None = None
    format: Literal["csv", "parquet"] | None = None
    url: str | None = None
    table: str | None = None
    joins: list[Join] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_kind(self) -> Source:
        if self.kind == "file" and not self.uri:
            raise ValueError("source.kind 'file' needs source.uri")
        if self.kind == "sql" and not (self.url and self.table):
            raise ValueError("source.kind 'sql' needs source.url and source.table")
        return self


class Target(Strict):
    """The label: a boolean pandas expression over raw columns."""

    name: str
    expression: str
    # Rows with a null in any of these cannot be labelled (e.g. cancelled flights): dropped, counted.
    required: list[str] = Field(default_factory=list)


class Features(Strict):
    numeric: list[str] = Field(default_factory=list)
    categorical: list[str] = Field(default_factory=list)

    @property
    def all(self) -> list[str]:
        return [*self.numeric, *self.categorical]


class Provenance(Strict):
    """Where a dataset comes from and on what terms: shown on every model card."""

    source: str
    owner: str
    terms_of_use: str
    license: str | None = None


class PersonalData(Strict):
    """Columns that identify or describe a person (or a person's property).

    They are dropped at ingest unless listed in ``allowed_as_features``, and masked wherever
    they could otherwise be written: the prediction log, reports, validation results, logs.
    """

    columns: list[str] = Field(default_factory=list)
    allowed_as_features: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _allowed_are_personal(self) -> PersonalData:
        stray = sorted(set(self.allowed_as_features) - set(self.columns))
        if stray:
            raise ValueError(
                f"personal_data.allowed_as_features names columns not in personal_data.columns: {stray}"
            )
        return self


class FeatureView(Strict):
    """One feature view of the feature store (Feast), defined by configuration.

    - ``table``: columns of a timestamped table (``uri``: a CSV/Parquet file, or empty for the
      dataset's own source), e.g. the hourly weather at each airport;
    - ``rolling_rate``: the rate of the dataset's label per entity over the previous
      ``window_days``, computed only from rows whose outcome was known ``lag_days`` before each
      day starts (no look-ahead); ``features`` names the rate and the row count, in that order.
    """

    name: str
    kind: Literal["table", "rolling_rate"]
    entities: list[str] = Field(min_length=1)
    features: list[str] = Field(min_length=1)
    uri: str | None = None
    timestamp: str | None = None  # the table's time column (default: the dataset's time column)
    ttl_hours: float = Field(24, gt=0)
    window_days: int = Field(28, ge=1)
    lag_days: int = Field(1, ge=0)
    # False: not joined into training rows, only used to complete key-only requests at serving
    # time (e.g. a flight's published schedule, which the training rows already carry).
    training: bool = True

    @model_validator(mode="after")
    def _rate_has_two_outputs(self) -> FeatureView:
        if self.kind == "rolling_rate" and len(self.features) != 2:
            raise ValueError(
                f"feature view {self.name!r}: a rolling_rate names two features: the rate and the count"
            )
        return self


class FeatureStoreConfig(Strict):
    """Features served from a feature store: point-in-time joins for training, online lookups for serving."""

    project: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    views: list[FeatureView] = Field(min_length=1)

    @property
    def training_features(self) -> list[str]:
        return [f for v in self.views if v.training for f in v.features]

    @property
    def entity_columns(self) -> list[str]:
        return list(dict.fromkeys(e for v in self.views for e in v.entities))


DatePart = Literal["year", "month", "day", "hour"]  # a part of the time column another column restates


class Dataset(Strict):
    name: str
    description: str = ""
    # Provenance is required: a model card must say where its data came from and on what terms.
    provenance: Provenance
    personal_data: PersonalData = Field(default_factory=PersonalData)
    intended_use: str = ""
    known_limits: list[str] = Field(default_factory=list)
    source: Source
    time_column: str
    key: list[str]
    target: Target
    features: Features
    slices: list[str] = Field(default_factory=list)
    # The expectation suite (YAML, next to the config). None: validate infers one from each training
    # snapshot and says so; `mlops suggest-expectations` writes one to edit and keep.
    expectations: str | None = None
    # Source columns the pipeline knowingly leaves unused. When set, any other column the config
    # does not name stops ingest: an upstream schema change (a new or renamed column) is caught
    # before training. None: no check.
    ignore_columns: list[str] | None = None
    # Columns that restate a part of the time column (read in schedule.timezone), checked against
    # it at ingest: a contradiction means shifted or mislabelled time. None: the columns named
    # year, month, day or hour, when the source has them; {}: no check.
    date_parts: dict[str, DatePart] | None = None
    # Features that come from a feature store rather than from the source rows.
    feature_store: FeatureStoreConfig | None = None
    # How clients send rows to the model server, for the closed loop's replay of the history: the
    # rows that share these columns and one time value form one request. []: a request per time value.
    request_group: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _label_is_not_a_feature(self) -> Dataset:
        unknown = sorted(set(self.request_group) - {*self.key, *self.features.all, *self.slices})
        if unknown:
            raise ValueError(f"request_group columns {unknown} must be key, feature or slice columns")
        leaking = {self.target.name, *self.target.required} & set(self.features.all)
        if leaking:
            raise ValueError(f"label columns {sorted(leaking)} cannot be features: they leak the outcome")
        numeric = sorted(set(self.personal_data.allowed_as_features) & set(self.features.numeric))
        if numeric:
            raise ValueError(
                f"personal-data columns {numeric} are pseudonymised to strings: they can only be "
                "categorical features"
            )
        personal = set(self.personal_data.columns) - set(self.personal_data.allowed_as_features)
        used = sorted(personal & {*self.features.all, *self.slices})
        if used:
            raise ValueError(
                f"personal-data columns {used} cannot be features or slices; list them under "
                "personal_data.allowed_as_features to use them on purpose"
            )
        return self

    @property
    def store_features(self) -> list[str]:
        """Features joined from the feature store (none without one)."""
        return self.feature_store.training_features if self.feature_store else []

    @property
    def source_columns(self) -> list[str]:
        """Columns the config reads from the source: key, time, features, slices, label inputs."""
        from_store = set(self.store_features)
        entities = self.feature_store.entity_columns if self.feature_store else []
        ordered = [
            *self.key,
            self.time_column,
            *entities,
            *self.features.all,
            *self.slices,
            *self.target.required,
        ]
        return [c for c in dict.fromkeys(ordered) if c not in from_store]

    @property
    def columns(self) -> list[str]:
        """Columns a snapshot keeps: key, time, features, label (leaky raw columns are dropped)."""
        ordered = [*self.key, self.time_column, *self.features.all, *self.slices, self.target.name]
        return list(dict.fromkeys(ordered))


class Schedule(Strict):
    cron: str = "@monthly"
    # The span the dataset has data for: scheduled intervals lie inside it, and a run whose interval
    # lies wholly outside fails at its first step, saying so (StepContext.check_window). Required:
    # where a dataset's data begins is the dataset's to say, not a default's.
    start_date: str
    end_date: str | None = None  # exclusive; None: live data, no end
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {value!r}") from exc
        return value


class Ingest(Strict):
    window_months: int = Field(3, ge=1, le=120)


class Search(Strict):
    enabled: bool = False
    n_iter: int = Field(6, ge=1, le=200)
    space: dict[str, list[Any]] = Field(default_factory=dict)


class Split(Strict):
    """How a training window becomes train, validation and test.

    ``time`` (default): oldest rows train, newest test, one timestamp never in two splits. The
    cuts fall at the fractions (``validation_fraction``, ``test_fraction``); with coarse time
    (yearly snapshots, a few dates) at the distinct times nearest to them; or at explicit dates
    (``validation_start``, ``test_start``). ``random``: rows (or whole ``group_column`` groups)
    drawn at random with ``random_state``; not time-honest, so the train step warns.
    """

    method: Literal["time", "random"] = "time"
    validation_start: datetime | None = None
    test_start: datetime | None = None
    group_column: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Split:
        dates = (self.validation_start, self.test_start)
        if any(d is not None for d in dates):
            if self.method != "time":
                raise ValueError("validation_start and test_start need method: time")
            if None in dates:
                raise ValueError("give both validation_start and test_start, or neither")
            if self.validation_start >= self.test_start:  # type: ignore[operator]
                raise ValueError("validation_start must be before test_start")
        if self.group_column is not None and self.method != "random":
            raise ValueError("group_column needs method: random")
        return self


class Training(Strict):
    estimator: Literal["hist_gradient_boosting", "logistic_regression"] = "hist_gradient_boosting"
    params: dict[str, Any] = Field(default_factory=dict)
    validation_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0, lt=0.5)
    split: Split = Field(default_factory=Split)
    search: Search = Field(default_factory=Search)
    random_state: int = 42
    # Test hook and sanity check: train on permuted labels; such a model must never pass the gate.
    shuffle_labels: bool = False
    # Continual training. stateless: from scratch on the sliding window (default). stateful: start
    # from the champion (its preprocessing and its trees or coefficients) and continue on the window.
    mode: Literal["stateless", "stateful"] = "stateless"
    # Stateful mode: boosting iterations added to the champion's (hist_gradient_boosting).
    warm_start_iterations: int = Field(50, ge=1, le=10_000)
    # Domain knowledge as constraints: numeric feature -> +1 (the late probability never falls as
    # it grows) or -1 (never rises). hist_gradient_boosting only (its ``monotonic_cst``).
    monotonic: dict[str, Literal[-1, 1]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _monotonic_needs_boosting(self) -> Training:
        if self.monotonic and self.estimator != "hist_gradient_boosting":
            raise ValueError("training.monotonic needs estimator hist_gradient_boosting")
        return self


class SliceGate(Strict):
    """Fairness-style check: the candidate's metric per value of each slice column (carrier, origin).

    The gap is best slice minus worst slice among slices with at least ``min_rows`` rows and both
    classes. Always reported; with ``gating`` a gap above ``max_gap`` rejects the candidate.
    """

    metric: Literal["roc_auc"] = "roc_auc"
    max_gap: float = Field(0.15, gt=0, le=1)
    gating: bool = False
    min_rows: int = Field(100, ge=10)


class Gate(Strict):
    metric: Literal["roc_auc", "pr_auc", "f1", "neg_log_loss"] = "roc_auc"
    min_value: float = 0.55
    # The candidate may be at most this much worse than the champion on the same test set.
    max_drop: float = Field(0.01, ge=0)
    slices: SliceGate = Field(default_factory=SliceGate)
    # A candidate this much better or worse than the champion (same test set, absolute) is not
    # promoted automatically: so wide a swing usually means a data problem. A person approves
    # its rollout in the Airflow UI. None: no band.
    swing_band: float | None = Field(None, gt=0)


class Rollout(Strict):
    """How a challenger reaches traffic, and the test, fixed in advance, that decides its fate."""

    strategy: Literal["direct", "canary", "shadow", "ab"] = "canary"
    # Share of requests the challenger answers (canary, ab). Default: 0.1 for canary, 0.5 for ab.
    share: float | None = Field(None, gt=0, lt=1)
    alpha: float = Field(0.05, gt=0, lt=0.5)
    power: float = Field(0.8, gt=0.5, lt=1)
    # Smallest change in error rate (absolute) the test must detect; sets the sample size.
    min_detectable_effect: float = Field(0.03, gt=0, lt=0.5)
    # No significant difference after the full sample: the challenger already passed the offline
    # gate, so by default it is promoted; "abort" keeps the champion unless the challenger wins.
    inconclusive: Literal["promote", "abort"] = "promote"
    max_wait_hours: float = Field(168, gt=0)
    poke_seconds: float = Field(60, gt=0)

    @property
    def effective_share(self) -> float:
        if self.share is not None:
            return self.share
        return 0.5 if self.strategy == "ab" else 0.1


class Deploy(Strict):
    # Which registered version to deploy; empty: the one behind the ``challenger`` alias.
    version: str | None = None
    rollout: Rollout = Field(default_factory=Rollout)

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    # Ask a person in the Airflow UI before a challenger takes traffic.
    approval: bool = False
    # Infra validation: the candidate, served in a sandbox, must answer single rows this fast (p95).
    latency_budget_ms: float = Field(100, gt=0)
    infra_queries: int = Field(50, ge=1, le=10_000)
    # Then as many clients at once, each answer checked against its own row's expected probability
    # (a server that mixes up concurrent requests is caught before it takes traffic).
    infra_concurrency: int = Field(8, ge=1, le=100)
    # The sandbox's peak resident memory must stay under this (MB): the serving pods' limit in the
    # chart (serving.resources.limits.memory: 1Gi in values.yaml, 2Gi in values-production.yaml;
    # keep them in step). The candidate alone is measured: a canary's pods hold the champion too.
    # Empty: no ceiling.
    infra_memory_limit_mb: float | None = Field(1024, gt=0)


class Batch(Strict):
    chunk_rows: int = Field(20_000, ge=1)


class ColumnDrift(Strict):
    """A per-column override of the drift method and/or threshold."""

    method: Literal["ks", "wasserstein", "psi", "chi2", "jensenshannon", "linf"] | None = None
    threshold: float | None = Field(None, gt=0)


class Drift(Strict):
    """Which statistic decides whether a column drifted, and when the data set as a whole did.

    Defaults follow common practice: on samples of thousands of rows a p-value flags even
    harmless shifts, so distances decide (normalised Wasserstein for numbers, Jensen-Shannon
    for categories); p-value tests (ks, chi2) use p < 0.01.
    """

    numeric_method: Literal["ks", "wasserstein", "psi"] = "wasserstein"
    categorical_method: Literal["chi2", "jensenshannon", "linf"] = "jensenshannon"
    # method -> threshold; unset methods keep the defaults in pipelines.drift.DEFAULT_THRESHOLDS
    thresholds: dict[str, float] = Field(default_factory=dict)
    columns: dict[str, ColumnDrift] = Field(default_factory=dict)
    # Fewer rows than this in the window (or the reference): "insufficient data", never an alarm.
    min_rows: int = Field(500, ge=1)
    # The window drifted when at least this share of the judged features drifted. With
    # ``weighting: importance`` each feature counts by the model's permutation importance (stored
    # with the model at training), so a shift in a feature the model ignores counts for nothing.
    share: float = Field(0.3, gt=0, le=1)
    weighting: Literal["none", "importance"] = "importance"
    psi_bins: int = Field(10, ge=2, le=100)
    # Rows kept from the training data as the reference sample (seeded, stored with the model).
    reference_rows: int = Field(50_000, ge=1_000)

    @field_validator("thresholds")
    @classmethod
    def _known_methods(cls, value: dict[str, float]) -> dict[str, float]:
        known = {"ks", "wasserstein", "psi", "chi2", "jensenshannon", "linf"}
        unknown = set(value) - known
        if unknown:
            raise ValueError(f"unknown drift methods {sorted(unknown)}; known: {sorted(known)}")
        return value


class Performance(Strict):
    """Live performance (prediction log joined with feedback) against a fair baseline.

    ``baseline: first_window``: the champion's own live score in the first window it served
    (stored on its model version); ``test``: its score on the in-window test split, which is
    almost always above next month's (the test rows are the window's last weeks). Decay is a
    drop larger than ``max_drop`` that is also significant at ``alpha`` (one-sided z-test on the
    two areas, Hanley-McNeil errors), so a month of noise does not count.

    Before labels come, the live score is estimated from the champion's calibrated
    probabilities (CBPE); ``max_estimated_drop`` makes an estimated drop a trigger of its own.

    A window the champion answered only in part (its canary rows before the promotion, a few
    days of the month) is judged but never becomes its baseline: the first window in which it
    answered at least ``baseline_min_served_share`` of the traffic does (most of it: another
    version's canary, 10-30% of the requests, does not hold the baseline back).
    """

    metric: Literal["roc_auc"] = "roc_auc"
    baseline: Literal["first_window", "test"] = "first_window"
    baseline_min_served_share: float = Field(0.5, gt=0, le=1)
    max_drop: float = Field(0.02, ge=0)
    alpha: float = Field(0.05, gt=0, lt=0.5)
    min_labelled_rows: int = Field(500, ge=1)
    max_estimated_drop: float = Field(0.03, gt=0)


class Retrain(Strict):
    """When monitoring asks for a retrain, and how often at most."""

    # retrain: a trigger asks for a retrain; notify: reports and notifications only, never a retrain.
    mode: Literal["retrain", "notify"] = "retrain"
    on_drift: bool = True
    on_decay: bool = True
    on_estimated_decay: bool = False
    # After a retrain request for the serving model, no second one for this long (window time),
    # unless a new champion started serving meanwhile: one drift episode gives one retrain.
    cooldown_hours: float = Field(24 * 7, ge=0)


class Monitoring(Strict):
    """The monitoring DAG judges one window, the run's data interval, against the champion's
    training reference: by cron (each interval) or by hand (the month before ``interval_end``)."""

    cron: str = "@daily"
    # prediction_log: the server's traffic in the window (joined with feedback labels);
    # batch: the source data of the window, scored with the champion (labels when present).
    source: Literal["prediction_log", "batch"] = "prediction_log"
    # Window on the time the scored events happened (``event_time`` sent by the client, else the
    # time the server answered), or strictly on the time the server answered (``ts``).
    clock: Literal["event_time", "ts"] = "event_time"
    drift: Drift = Field(default_factory=Drift)
    performance: Performance = Field(default_factory=Performance)
    retrain: Retrain = Field(default_factory=Retrain)


class Registry(Strict):
    model_name: str
    experiment: str


class PipelineConfig(Strict):
    dataset: Dataset
    schedule: Schedule
    ingest: Ingest = Field(default_factory=Ingest)
    training: Training = Field(default_factory=Training)
    gate: Gate = Field(default_factory=Gate)
    registry: Registry
    deploy: Deploy = Field(default_factory=Deploy)
    batch: Batch = Field(default_factory=Batch)
    monitoring: Monitoring = Field(default_factory=Monitoring)
    base_dir: str = ""

    @model_validator(mode="after")
    def _monotonic_features_exist(self) -> PipelineConfig:
        unknown = sorted(set(self.training.monotonic) - set(self.dataset.features.numeric))
        if unknown:
            raise ValueError(f"training.monotonic names columns that are not numeric features: {unknown}")
        return self

    @property
    def expectations_path(self) -> Path:
        """The suite's file: the configured one, or where ``mlops suggest-expectations`` writes one."""
        name = self.dataset.expectations or f"{self.dataset.name}.expectations.yaml"
        return Path(self.base_dir) / name

    def with_overrides(self, overrides: dict[str, Any] | None) -> PipelineConfig:
        """Apply run-time parameters (Airflow params form, CLI) by their flat names."""
        data = self.model_dump()
        for name, value in (overrides or {}).items():
            if value is None or value == "":
                continue
            if name not in RUN_PARAMETERS:
                raise ConfigError(f"unknown run parameter {name!r}; known: {sorted(RUN_PARAMETERS)}")
            *parents, leaf = RUN_PARAMETERS[name]
            node = data
            for part in parents:
                node = node[part]
            node[leaf] = value
        return _build(data)


def _build(data: dict[str, Any]) -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ConfigError(f"invalid pipeline config: {problems}") from exc


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Read a pipeline config YAML file; relative paths in it resolve against its folder."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"pipeline config not found: {path}")
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"pipeline config {path} must be a mapping")
    data.setdefault("base_dir", str(path.parent.resolve()))
    source = (data.get("dataset") or {}).get("source") or {}
    for entry in [source, *(source.get("joins") or [])]:
        if isinstance(entry, dict) and entry.get("uri"):
            entry["uri"] = _relative_to(entry["uri"], data["base_dir"])
    return _build(data).with_overrides(overrides)


def _relative_to(uri: str, base_dir: str) -> str:
    """A relative local path in a config file means relative to that file, not to the worker's cwd."""
    if "://" in uri or Path(uri).is_absolute():
        return uri
    return str(Path(base_dir) / uri)


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc


def load_expectations(config: PipelineConfig) -> list[dict[str, Any]]:
    """The expectation suite kept next to the config, as a list of {type, kwargs} entries."""
    path = config.expectations_path
    if not path.is_file():
        raise ConfigError(f"expectation suite not found: {path}")
    suite = _read_yaml(path)
    expectations = suite.get("expectations") if isinstance(suite, dict) else None
    if not isinstance(expectations, list):
        raise ConfigError(f"{path}: top-level 'expectations' must be a list")
    return expectations
