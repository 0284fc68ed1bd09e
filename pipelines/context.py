"""What a step knows about the run it belongs to.

The orchestrator (Airflow, or the plain runner) builds a :class:`StepContext`
and hands it to ``step.run(ctx, inputs)``. It carries identifiers and the
effective config, never data.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd

from pipelines import util
from pipelines.config import PipelineConfig, load_config
from pipelines.errors import ConfigError
from pipelines.settings import Settings
from pipelines.storage import step_dir

log = logging.getLogger(__name__)


def parse_time(value: str | datetime, name: str, timezone: str = "UTC") -> datetime:
    """A UTC datetime from an ISO string or datetime; a naive value is read in ``timezone``."""
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{name} is not a date or timestamp: {value!r}") from exc
    if stamp is pd.NaT:
        raise ConfigError(f"{name} is empty")
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize(timezone)
    stamp = stamp.tz_convert("UTC")
    return stamp.to_pydatetime()


@dataclass(frozen=True)
class StepContext:
    """Identity of the run, its data interval, the effective config and the stores."""

    dag_id: str
    run_id: str
    interval_start: datetime
    interval_end: datetime
    config: PipelineConfig
    settings: Settings
    try_number: int = 1
    run_type: str = "manual"
    # Who or what started the run: {"user": ..., "asset_events": [{"uri", "extra", ...}]}
    # (from the orchestrator; the audit trail records it).
    trigger: dict[str, Any] | None = None
    # Where the interval's end came from, for error messages: "the form's interval_end", ...
    interval_origin: str = "interval_end"

    def __post_init__(self) -> None:
        if self.interval_end <= self.interval_start:
            raise ConfigError(
                f"data interval is empty: start {self.interval_start} is not before end {self.interval_end}"
            )

    @property
    def run_key(self) -> str:
        """Globally unique name of this pipeline run, used to make retries idempotent."""
        return f"{self.dag_id}/{self.run_id}"

    def check_window(self, start: datetime | None = None, end: datetime | None = None) -> None:
        """Fail, saying why, when the rows a step is about to read lie outside the dataset's data.

        ``[start, end)`` is the window the step reads (default: the data interval); the span is
        ``schedule.start_date`` .. ``schedule.end_date`` (no end: live data). A step that reads the
        dataset calls this first, so a run triggered at a logical date outside the data (the UI's
        default is *now*) fails at once, naming the window and where it came from.
        """
        start, end = start or self.interval_start, end or self.interval_end
        schedule, tz = self.config.schedule, self.config.schedule.timezone
        first = parse_time(schedule.start_date, "schedule.start_date", tz)
        last = parse_time(schedule.end_date, "schedule.end_date", tz) if schedule.end_date else None
        if end > first and (last is None or start < last):
            return

        def day(value: datetime) -> str:
            return f"{pd.Timestamp(value).tz_convert(tz):%Y-%m-%d %H:%M}"

        span = f"from {schedule.start_date}" + (f" to {schedule.end_date}" if last else " on")
        latest = f" and no later than {schedule.end_date}" if last else ""
        raise ConfigError(
            f"the run's data interval [{day(self.interval_start)}, {day(self.interval_end)}) ({tz}) "
            f"asks for rows in [{day(start)}, {day(end)}), which lies outside the data of dataset "
            f"{self.config.dataset.name!r}: it has data {span} (schedule.start_date/end_date in its "
            f"config). The interval came from {self.interval_origin}. Give an interval_end after "
            f"{schedule.start_date}{latest} (the trigger form's first field; --interval-end on the "
            "command line)."
        )

    def training_window(self) -> tuple[pd.Timestamp, pd.Timestamp]:
        """The window a training run reads: ``window_months`` back from the interval's end.

        Counted in the dataset's timezone, so a window that crosses a DST change still starts at
        local midnight. It starts no earlier than the dataset's data (``schedule.start_date``): a
        12-month window in March 2013 is January to March, and the model's tags say so.
        """
        schedule = self.config.schedule
        end = pd.Timestamp(self.interval_end).tz_convert(schedule.timezone)
        start = end - pd.DateOffset(months=self.config.ingest.window_months)
        first = pd.Timestamp(parse_time(schedule.start_date, "schedule.start_date", schedule.timezone))
        return max(start, first).tz_convert("UTC"), end.tz_convert("UTC")

    def artifact_dir(self, step: str) -> str:
        return step_dir(self.settings.artifact_root, self.dag_id, self.run_id, step)

    @classmethod
    def from_json(cls, context: dict[str, Any]) -> StepContext:
        """A context as the orchestrator sends it (``mlops step --context``).

        Keys this version does not know are left out with a warning: the Airflow side and a step
        image may be one release apart, and a new key must not fail every step of an older image.
        """
        known = set(inspect.signature(cls.create).parameters) - {"settings"}
        unknown = sorted(set(context) - known)
        if unknown:
            log.warning("ignoring run-context keys this version does not know: %s", unknown)
        return cls.create(**{k: v for k, v in context.items() if k in known})

    @classmethod
    def create(
        cls,
        *,
        dag_id: str,
        run_id: str,
        interval_end: str | datetime | None,
        interval_start: str | datetime | None = None,
        overrides: dict[str, Any] | None = None,
        try_number: int = 1,
        run_type: str = "manual",
        trigger: dict[str, Any] | None = None,
        interval_origin: str = "interval_end",
        settings: Settings | None = None,
    ) -> StepContext:
        """Build a context from plain values, loading the config named by the settings.

        Without a start, the interval is the month before its end, counted in the dataset's timezone.
        Without an end, it ends where the dataset's data ends (``schedule.end_date``), or now.
        """
        settings = settings or Settings.from_env()
        config = load_config(settings.config_path, overrides)
        tz = config.schedule.timezone  # "2013-06-01" means midnight where the DAG's months start
        if interval_end is None:
            interval_end = config.schedule.end_date or util.utc_now().replace(second=0, microsecond=0)
        end = parse_time(interval_end, "interval_end", tz)
        if interval_start is None:
            local_end = pd.Timestamp(end).tz_convert(tz)
            start = (local_end - pd.DateOffset(months=1)).tz_convert("UTC").to_pydatetime()
        else:
            start = parse_time(interval_start, "interval_start", tz)
        return cls(
            dag_id=dag_id,
            run_id=run_id,
            interval_start=start,
            interval_end=end,
            config=config,
            settings=settings,
            try_number=try_number,
            run_type=run_type,
            trigger=trigger,
            interval_origin=interval_origin,
        )
