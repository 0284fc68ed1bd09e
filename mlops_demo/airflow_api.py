"""The few calls of Airflow's REST API (v2) that the demo loop and its tests make.

The simple auth manager of a local stack lets an admin in without a login. A rollout sent to a
person waits in the UI; the replay stands in for that person through the same API the UI uses.
"""

from __future__ import annotations

import json
import time
from typing import Any

from mlops_demo.console import say

FINISHED = {"success", "failed"}
# Airflow 3.3 shows a human-in-the-loop task waiting for its answer as "awaiting_input".
WAITING_FOR_A_PERSON = {"awaiting_input", "deferred"}
# How long an approval waits before the replay answers it (see ``wait``): 4 s was too short on a
# loaded machine (two test workers on two cores), where each early answer cost a retry of 40-110 s.
APPROVAL_DELAY_S = 15.0


class Airflow:
    """The few calls the loop needs (the simple auth manager lets a local admin in without a login)."""

    def __init__(self, port: int, auto_approve: bool = True):
        import httpx

        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v2", timeout=30)
        # A rollout sent to a person (wide metric swing) waits in the UI; the replay stands in
        # for that person, through the same API the UI uses, unless told not to.
        self.auto_approve = auto_approve
        self.approvals: list[dict[str, Any]] = []

    def approve(self, dag_id: str, run_id: str) -> None:
        """Answer a waiting human-in-the-loop approval with "Approve", as a person in the UI would."""
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/approve/-1/hitlDetails"
        detail = self._get(path)
        if detail.get("response_received"):
            return  # answered already; the task has not picked the answer up yet
        say(f"  approval requested: {detail.get('subject')} {str(detail.get('body'))[:200]}")
        response = self.http.patch(path, json={"chosen_options": ["Approve"]})
        response.raise_for_status()
        self.approvals.append({"dag_id": dag_id, "run_id": run_id, "body": detail.get("body")})
        say("  approved by the replay (in production a person answers in the Airflow UI)")

    def _get(self, path: str, **params: Any) -> Any:
        response = self.http.get(path, params=params)
        response.raise_for_status()
        return response.json()

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        response = self.http.post(f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})
        response.raise_for_status()
        return response.json()["dag_run_id"]

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self._get(f"/dags/{dag_id}/dagRuns", order_by="run_after", limit=100)["dag_runs"]

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self._get(f"/dags/{dag_id}/dagRuns/{run_id}")

    def tasks(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        found = self._get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
        return {t["task_id"]: t["state"] for t in found}

    def result(self, dag_id: str, run_id: str, task_id: str) -> Any:
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value"
        try:
            entry = self._get(path)
        except Exception:  # no result: the task was skipped, failed or has not run
            return None
        value = entry.get("value")
        return json.loads(value) if isinstance(value, str) and value[:1] in "{[" else value

    def wait(self, dag_id: str, run_id: str, timeout: float, until=None) -> dict[str, Any]:
        """Poll a run until it finishes (or ``until(tasks)`` says enough); show progress as it goes."""
        deadline, shown, waiting_since = time.time() + timeout, None, None
        while True:
            run = self.run(dag_id, run_id)
            tasks = self.tasks(dag_id, run_id)
            progress = " ".join(f"{t}={s or '-'}" for t, s in tasks.items())
            if progress != shown:
                say(f"  {dag_id} {run['state']}: {progress}")
                shown = progress
            if run["state"] in FINISHED or (until and until(tasks)):
                return {**run, "tasks": tasks}
            waiting = tasks.get("approve") in WAITING_FOR_A_PERSON
            waiting_since = (waiting_since or time.time()) if waiting else None
            # Answer like a person: not within seconds of the request. Airflow 3.3.2 fails the
            # task (up_for_retry: "Task Instance not found, it may have been moved to the Task
            # Instance History table") when the answer re-queues it before the scheduler has taken
            # the pausing worker's exit event; a retried task asks again and is answered again.
            if waiting and self.auto_approve and time.time() - waiting_since >= APPROVAL_DELAY_S:
                self.approve(dag_id, run_id)
            if time.time() > deadline:
                return {**run, "tasks": tasks, "timed_out": True}
            time.sleep(2)

    def new_run(self, dag_id: str, known: set[str], timeout: float) -> str | None:
        """The id of a run of ``dag_id`` not in ``known`` (e.g. one an Asset event started)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            fresh = [r["dag_run_id"] for r in self.runs(dag_id) if r["dag_run_id"] not in known]
            if fresh:
                return fresh[-1]
            time.sleep(2)
        return None
