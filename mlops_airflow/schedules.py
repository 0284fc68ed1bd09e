"""When the DAGs run: cron data intervals inside the span the dataset has data for.

Why a timetable of our own: Airflow creates a run's task instances only for a logical
date between the DAG's ``start_date`` and ``end_date``. A run triggered outside them (the UI's
trigger form defaults the logical date to *now*, after a historical dataset's end) is created
with no task at all and turns green having done nothing. So the DAGs carry no ``end_date`` and
an early ``start_date`` (Airflow 3 takes a DAG's timezone from it), and the data's span bounds
the *schedule* here instead. A manual run at any logical date then runs its tasks; its window
comes from the form's ``interval_end`` or the timetable, and a window outside the data fails at
the first step with a message that says so (``pipelines.context.StepContext.check_window``).

The class is registered with Airflow by ``mlops_airflow.plugin`` (custom timetables must be).
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.timetables.base import DagRunInfo, DataInterval, TimeRestriction
from airflow.timetables.interval import CronDataIntervalTimetable

from pipelines.config import PipelineConfig

# The start_date of every DAG: before any logical date a person can pick, in the dataset's
# timezone (Airflow 3 derives a DAG's timezone from its start_date and nothing else).
EPOCH = "1970-01-01"


def dag_start(config: PipelineConfig) -> pendulum.DateTime:
    """Every DAG's ``start_date``: the epoch at local midnight of the dataset's timezone."""
    return pendulum.parse(EPOCH, tz=config.schedule.timezone)


class DataSpanTimetable(CronDataIntervalTimetable):
    """Cron data intervals that lie wholly inside ``[first, last)``; ``last`` None: no end.

    Manual runs are not restricted: their data interval is inferred as for any cron timetable.
    """

    def __init__(
        self,
        cron: str,
        timezone: Any,
        *,
        first: pendulum.DateTime,
        last: pendulum.DateTime | None = None,
    ) -> None:
        super().__init__(cron, timezone)
        self.first = first
        self.last = last

    @classmethod
    def for_config(cls, config: PipelineConfig, cron: str | None = None) -> DataSpanTimetable:
        """The config's schedule (or ``cron``) over ``schedule.start_date`` .. ``schedule.end_date``."""
        schedule, tz = config.schedule, config.schedule.timezone
        last = pendulum.parse(schedule.end_date, tz=tz) if schedule.end_date else None
        return cls(cron or schedule.cron, tz, first=pendulum.parse(schedule.start_date, tz=tz), last=last)

    @property
    def summary(self) -> str:
        span = (
            f"{self.first:%Y-%m-%d} to {self.last:%Y-%m-%d}"
            if self.last
            else f"from {self.first:%Y-%m-%d} on"
        )
        return f"{self._expression}, {span}"

    def serialize(self) -> dict[str, Any]:
        return {
            **super().serialize(),
            "first": self.first.isoformat(),
            "last": self.last.isoformat() if self.last else None,
        }

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> DataSpanTimetable:
        base = CronDataIntervalTimetable.deserialize(data)
        tz = base._timezone  # in the schedule's own zone again, not the fixed offset of the ISO text

        def parse(value: str | None) -> pendulum.DateTime | None:
            return pendulum.parse(value).in_timezone(tz) if value else None

        return cls(base._expression, tz, first=parse(data["first"]), last=parse(data.get("last")))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DataSpanTimetable):  # never equal to an unbounded cron timetable
            return False
        return super().__eq__(other) and (self.first, self.last) == (other.first, other.last)

    def __hash__(self) -> int:
        return hash((self._expression, self._timezone, self.first, self.last))

    def next_dagrun_info(
        self, *, last_automated_data_interval: DataInterval | None, restriction: TimeRestriction
    ) -> DagRunInfo | None:
        earliest = max(restriction.earliest, self.first) if restriction.earliest else self.first
        info = super().next_dagrun_info(
            last_automated_data_interval=last_automated_data_interval,
            restriction=TimeRestriction(earliest, restriction.latest, restriction.catchup),
        )
        if info is None or (self.last is not None and info.data_interval.end > self.last):
            return None
        return info
