"""The prediction-log hand-off: a scored micro-batch becomes log rows, written before any answer.

A failing write is retried request by request, so one bad request fails alone; an outage
of the log itself (database, disk) is remembered, and ``/ready`` fails until the log answers.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pipelines.serving.batching import Job

log = logging.getLogger("pipelines.serving")


class PredictionLogHandoff:
    """The logging part of :class:`~pipelines.serving.server.Server` (a mixin: the state is the server's)."""

    # set by Server.__init__: the prediction log (None in a sandbox) and why it cannot be written
    log: Any
    log_outage: str | None

    def _log_rows(self, jobs: list[Job]) -> list[dict]:
        now = time.time()
        rows = []
        for j in jobs:
            model = j.model
            latency_ms = (time.perf_counter() - j.started) * 1000
            assert j.result is not None  # only scored jobs (no error) are logged
            for r, (record, p) in enumerate(
                zip(j.batch.records(model.schema), j.result.tolist(), strict=True)
            ):
                rows.append(
                    {
                        "request_id": j.request_id,
                        "row": r,
                        "ts": now * 1000,
                        "event_time": j.event_time,
                        "model_name": model.name,
                        "model_version": model.version,
                        "route": j.route,
                        "routing_key": j.routing_key,
                        "rollout_id": j.rollout_id,
                        "probability": p,
                        "prediction": int(p >= model.threshold),
                        "latency_ms": latency_ms,
                        "inputs": record,
                    }
                )
        return rows

    def _append(self, jobs: list[Job]) -> list[Job]:
        """Log the micro-batch; if that fails, each request alone, so one bad request fails alone.

        Returns the jobs that were logged; the others carry their error (and get a 503).
        """
        try:
            self.log.append(self._log_rows(jobs))
            self.log_outage = None
            return jobs
        except Exception as exc:
            self._note_outage(exc)
            if len(jobs) == 1 or self.log_outage:  # an outage fails everyone alike: no retry storm
                raise
            log.warning("logging a micro-batch of %d failed (%s); logging each request alone", len(jobs), exc)
        logged = []
        for j in jobs:
            try:
                self.log.append(self._log_rows([j]))
                logged.append(j)
            except Exception as exc:
                j.error = exc
                log.exception("request %s was not logged, so it is not answered", j.request_id)
        return logged

    def _note_outage(self, exc: Exception) -> None:
        """Remember an outage of the log (not a request the database refused)."""
        if _is_outage(exc):
            self.log_outage = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            log.error("the prediction log cannot be written (%s): not ready until it can", self.log_outage)

    def _log_recovered(self) -> bool:
        """After an outage, whether the log answers again (runs in a worker thread)."""
        try:
            self.log.ping()
        except Exception as exc:
            self._note_outage(exc)
            return False
        log.warning("the prediction log answers again: ready")
        self.log_outage = None
        return True


def _is_outage(exc: Exception) -> bool:
    """A failure of the log itself (connection, timeout, disk), not of one request's data."""
    if isinstance(exc, OSError):
        return True
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"OperationalError", "InterfaceError", "DisconnectionError", "TimeoutError"})
