"""The Airflow UI as a person uses it: ``make up``, then each DAG's Trigger form in a real browser.

Headless Chromium (Debian's ``chromium``, driven by Playwright's Python package with
``executable_path``: no browser download) opens the Airflow UI of one stack that ``make up``
starts for this module, with a config that asks a person to approve every rollout
(``deploy.approval: true``). In order, as the README's "In the Airflow UI" walk-through tells it:

1. ``training`` triggered with the form as offered: its window (the UI's default logical date,
   *now*) lies outside the bundled data, so the run fails at ``ingest`` and the task log in the
   UI says why; nothing is registered (issue 16: it used to turn green with no task at all);
2. ``training`` with "Train up to" 2013-04-01: every task succeeds and v1 is registered;
3. the deploy that follows waits on the approval page; **Approve** puts v1 live, and the
   model server answers the README's ``curl`` with it (so does ``make serve``);
4. ``batch_inference`` with "Score up to" 2013-05-01 scores April with v1;
5. ``monitoring`` with "Window ends" 2013-05-01 and "Rows to judge" = batch finds April's drift
   and requests a retrain; the scheduler trains v2 on that event, and its deploy waits again:
   **Reject** keeps v1 serving;
6. ``make down`` stops every process.

The tests share the stack and run in this order: each builds on the one before, and skips,
naming it, when that one did not pass.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import DEFAULT_CONFIG, free_port, wait_http
from mlops_demo.airflow_api import APPROVAL_DELAY_S

pytestmark = [pytest.mark.e2e, pytest.mark.scheduler]
ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
# As the machine notes advise: no sandbox as root, and no background traffic to Google's hosts
# (the closed network refuses it, many connections at a time).
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
MODEL = "flights-delay"
README = (ROOT / "docs" / "running.md").read_text()
REACHED: set[str] = set()  # the walk-through's steps that passed, in this module's run


def needs(step: str) -> None:
    if step not in REACHED:
        pytest.skip(f"needs the earlier step {step!r}, which did not pass")


@dataclass
class Stack:
    home: Path
    env: dict[str, str]
    airflow: str
    mlflow: str
    server: str

    def api(self, path: str, method: str = "GET", body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.airflow}/api/v2{path}",
            data=data,
            method=method,
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as resp:  # no login on the local stack
            return json.loads(resp.read())

    def run(self, dag_id: str, run_id: str) -> dict:
        return self.api(f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}")

    def tasks(self, dag_id: str, run_id: str) -> dict[str, dict]:
        found = self.api(f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances")
        return {t["task_id"]: t for t in found["task_instances"]}

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 300) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            run = self.run(dag_id, run_id)
            if run["state"] in ("success", "failed"):
                return run
            time.sleep(2)
        raise TimeoutError(f"{dag_id} {run_id} still {run['state']}: {self.states(dag_id, run_id)}")

    def states(self, dag_id: str, run_id: str) -> dict[str, str]:
        return {task: t["state"] for task, t in self.tasks(dag_id, run_id).items()}

    def mlflow_json(self, path: str) -> dict:
        with urllib.request.urlopen(f"{self.mlflow}/api/2.0/mlflow/{path}", timeout=30) as resp:
            return json.loads(resp.read())

    def aliases(self) -> dict[str, str]:
        model = self.mlflow_json(f"registered-models/get?name={MODEL}")["registered_model"]
        return {a["alias"]: a["version"] for a in model.get("aliases", [])}

    def versions(self) -> list[str]:
        query = urllib.parse.quote(f"name='{MODEL}'")
        found = self.mlflow_json(f"model-versions/search?filter={query}")
        return sorted(v["version"] for v in found.get("model_versions", []))

    def make(self, *targets: str, timeout: float = 400, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["make", "-s", *targets], cwd=ROOT, env={**self.env, **env}, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip


@pytest.fixture(scope="module")
def stack(tmp_path_factory, browser):
    """``make up`` on a fresh home, with ``deploy.approval: true``; ``make down`` at the end.

    It needs the browser: without Chromium the whole module skips (fails under CI) before starting.
    """
    home = tmp_path_factory.mktemp("ui-stack")
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config["dataset"]["expectations"] = str(DEFAULT_CONFIG.parent / config["dataset"]["expectations"])
    config["deploy"]["approval"] = True
    # April moves features holding 0.28 of v1's importance: below the bundled 0.3 share, so the
    # monitoring test lowers it to 0.2 (as tests/e2e/test_loop.py does) to get a retrain request
    config["monitoring"]["drift"]["share"] = 0.2
    (home / "flights-approval.yaml").write_text(yaml.safe_dump(config))
    ports = {
        "MLOPS_AIRFLOW_PORT": free_port(),
        "MLOPS_MLFLOW_PORT": free_port(),
        "MLOPS_SERVING_PORT": free_port(),
    }
    env = {
        **os.environ,
        **{k: str(v) for k, v in ports.items()},
        "MLOPS_HOME": str(home / "mlops"),
        "MLOPS_CONFIG": str(home / "flights-approval.yaml"),
    }
    env.pop("MLFLOW_TRACKING_URI", None)  # the session's; `make up` points everything at its own server
    stack = Stack(
        home=home / "mlops",
        env=env,
        airflow=f"http://127.0.0.1:{ports['MLOPS_AIRFLOW_PORT']}",
        mlflow=f"http://127.0.0.1:{ports['MLOPS_MLFLOW_PORT']}",
        server=f"http://127.0.0.1:{ports['MLOPS_SERVING_PORT']}",
    )
    try:
        up = stack.make("up")
        assert up.returncode == 0, up.stdout + up.stderr
        yield stack
    finally:
        stack.make("down", timeout=120)  # idempotent: the last test has already stopped it


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: `make test` installs Debian's chromium (as root)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, stack, request):
    context = browser.new_context(base_url=stack.airflow, viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:  # what the browser showed, for the CI log's reader
        shot = stack.home.parent / f"{request.node.name}.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}")
    context.close()


def trigger(
    page, dag_id: str, dates: dict[str, str] | None = None, choices: dict[str, str] | None = None
) -> str:
    """Open the DAG, press Trigger, fill the params form as a person would, press Trigger; the run id."""
    page.goto(f"/dags/{dag_id}")
    page.get_by_role("button", name="Trigger").first.click()
    form = page.locator("[role=dialog][data-state=open]")
    form.get_by_text("Run Parameters").wait_for()
    for name, value in (dates or {}).items():
        form.locator(f"#element_{name}").fill(value)  # a date field: what typing the date gives
    for name, option in (choices or {}).items():
        form.locator(f"#element_{name}").get_by_role("combobox").click()
        page.get_by_role("option", name=option, exact=True).click()
    posted = re.compile(rf".*/api/v2/dags/{dag_id}/dagRuns$")
    with page.expect_response(lambda r: r.request.method == "POST" and posted.match(r.url)) as created:
        form.get_by_role("button", name="Trigger", exact=True).click()
    assert created.value.status == 200, created.value.text()
    run_id = created.value.json()["dag_run_id"]
    page.wait_for_url(re.compile(rf".*/dags/{dag_id}/runs/.*"))  # the UI opens the new run
    return run_id


def shows_state(page, dag_id: str, run_id: str, state: str) -> None:
    """The run's page in the UI shows the run's final state."""
    page.goto(f"/dags/{dag_id}/runs/{urllib.parse.quote(run_id, safe='')}")
    from playwright.sync_api import expect

    header = page.get_by_text(run_id).first
    expect(header).to_be_visible()
    expect(page.get_by_text(state, exact=True).first).to_be_visible()


def wait_for_a_person(stack: Stack, dag_id: str, timeout: float = 300) -> str:
    """The newest run of ``dag_id`` once its ``approve`` task has waited a few seconds for an answer.

    Airflow 3.3.2 can lose an answer given soon after the task pauses (stack-facts.md; seconds, on a
    loaded machine): a person takes longer than that, and so does this (as the demo's replay does).
    """
    deadline = time.time() + timeout
    while time.time() < deadline:
        runs = stack.api(f"/dags/{dag_id}/dagRuns?order_by=-run_after&limit=1")["dag_runs"]
        if runs:
            approve = stack.tasks(dag_id, runs[0]["dag_run_id"]).get("approve") or {}
            if approve.get("state") == "awaiting_input" and approve.get("start_date"):
                waited = time.time() - _epoch(approve["start_date"])
                if waited > APPROVAL_DELAY_S:
                    return runs[0]["dag_run_id"]
        time.sleep(2)
    raise TimeoutError(f"no {dag_id} run waited for a person within {timeout}s")


def _epoch(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def answer(page, dag_id: str, run_id: str, choice: str) -> None:
    """Browse -> Required Actions -> the deploy's request -> Approve or Reject, as a reviewer does."""
    page.goto("/required_actions")  # Browse -> Required Actions: every request, answered ones too
    request = page.get_by_role("row").filter(has_text=run_id)
    request.get_by_role("link", name=f"Deploy {MODEL}: approve the rollout?").click()
    page.wait_for_url(re.compile(rf".*/runs/{re.escape(run_id)}/tasks/approve/required_actions"))
    with page.expect_response(lambda r: r.request.method == "PATCH" and "hitlDetails" in r.url) as sent:
        page.get_by_role("button", name=choice, exact=True).click()
    assert sent.value.status == 200 and sent.value.json()["chosen_options"] == [choice]
    page.get_by_text("Response received at").first.wait_for()


def readme_request() -> dict:
    """The body of the README's ``curl -X POST .../predict`` example, exactly as printed there."""
    block = README[README.index("curl -s -X POST http://127.0.0.1:8000/predict") :]
    body = block[block.index("-d '") + 4 : block.index("}'") + 1]
    return json.loads(body)


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read())


# -- the walk-through, in order ----------------------------------------------------------------------


def test_make_up_serves_both_uis_with_the_dags_unpaused(stack, page):
    page.goto("/dags")
    for dag_id in ("training", "deploy", "monitoring", "batch_inference"):
        page.get_by_role("link", name=dag_id, exact=True).first.wait_for()
    dags = {d["dag_id"]: d for d in stack.api("/dags")["dags"]}
    assert dags["training"]["is_paused"] is False and dags["deploy"]["is_paused"] is False
    # The schedule stops where the bundled data does: a restart of the UI starts no run after 2013.
    assert "2013-01-01 to 2014-01-01" in dags["training"]["timetable_summary"]
    assert stack.mlflow_json("experiments/search?max_results=10")["experiments"]
    with urllib.request.urlopen(f"{stack.server}/health", timeout=10) as resp:
        assert json.loads(resp.read()) == {"status": "ok"}
    with pytest.raises(urllib.error.HTTPError) as not_ready:  # nothing trained in this home yet
        urllib.request.urlopen(f"{stack.server}/ready", timeout=10)
    assert not_ready.value.code == 503
    assert len(list((stack.home / "run").glob("*.pid"))) == 3


def test_a_trigger_with_the_form_as_offered_fails_and_the_log_says_why(stack, page):
    run_id = trigger(page, "training")  # logical date: now, long after the bundled data ends
    run = stack.wait_run("training", run_id, timeout=180)
    states = stack.states("training", run_id)
    assert run["state"] == "failed" and states["ingest"] == "failed", states  # never green with no task
    assert set(states) == {"ingest", "validate", "train", "evaluate", "register"}
    assert stack.tasks("training", run_id)["ingest"]["try_number"] == 1  # bad input: not retried
    assert {states[t] for t in ("validate", "train", "evaluate", "register")} == {"upstream_failed"}
    shows_state(page, "training", run_id, "Failed")
    page.goto(f"/dags/training/runs/{urllib.parse.quote(run_id, safe='')}/tasks/ingest")
    page.get_by_text("lies outside the data of dataset 'flights'").first.wait_for()
    page.get_by_text("Give an interval_end after 2013-01-01").first.wait_for()
    assert stack.versions() == []  # nothing registered


def test_training_from_the_form_trains_and_registers(stack, page):
    run_id = trigger(page, "training", dates={"interval_end": "2013-04-01"})
    run = stack.wait_run("training", run_id, timeout=400)
    assert run["state"] == "success", stack.states("training", run_id)
    assert set(stack.states("training", run_id).values()) == {"success"}
    assert run["conf"]["interval_end"] == "2013-04-01"
    shows_state(page, "training", run_id, "Success")
    assert stack.versions() == ["1"]
    # a person approves every rollout here: v1 is the challenger, not yet serving
    assert stack.aliases() == {"challenger": "1"}
    REACHED.add("trained")


def test_approve_on_the_approval_page_puts_the_model_live(stack, page):
    needs("trained")
    run_id = wait_for_a_person(stack, "deploy")
    answer(page, "deploy", run_id, "Approve")
    run = stack.wait_run("deploy", run_id, timeout=300)
    states = stack.states("deploy", run_id)
    assert (
        run["state"] == "success" and states["approve"] == "success" and states["start_rollout"] == "success"
    )
    assert stack.aliases()["champion"] == "1"
    wait_http(f"{stack.server}/ready", 60)  # the server follows the registry within a poll
    answered = post(f"{stack.server}/predict", readme_request())
    assert answered["model_version"] == "1" and answered["route"] == "champion"
    assert 0 <= answered["predictions"][0]["probability"] <= 1
    REACHED.add("serving")


def test_make_serve_serves_the_champion(stack):
    needs("serving")
    port = free_port()
    serve = subprocess.Popen(
        ["make", "-s", "serve"], cwd=ROOT, env={**stack.env, "MLOPS_SERVING_PORT": str(port)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/ready", 90)
        answered = post(f"http://127.0.0.1:{port}/predict", readme_request())
        assert answered["model_version"] == "1"
    finally:
        os.killpg(serve.pid, 2)  # Ctrl-C, as the README says
        serve.wait(30)


def test_batch_inference_from_the_form_scores_the_month(stack, page):
    import pandas as pd

    needs("serving")
    run_id = trigger(page, "batch_inference", dates={"interval_end": "2013-05-01"})
    run = stack.wait_run("batch_inference", run_id, timeout=300)
    assert run["state"] == "success", stack.states("batch_inference", run_id)
    shows_state(page, "batch_inference", run_id, "Success")
    run_path = f"/dags/batch_inference/dagRuns/{urllib.parse.quote(run_id, safe='')}"
    scored = stack.api(f"{run_path}/taskInstances/score/xcomEntries/return_value")["value"]
    predictions = pd.read_parquet(scored["predictions_uri"])
    assert scored["model_version"] == "1" and len(predictions) == scored["rows"] > 25_000
    april = predictions["time_hour"].dt.tz_convert("America/New_York")
    assert april.min() >= pd.Timestamp("2013-04-01", tz="America/New_York")
    assert april.max() < pd.Timestamp("2013-05-01", tz="America/New_York")


def test_monitoring_from_the_form_requests_a_retrain_and_reject_keeps_the_champion(stack, page):
    needs("serving")
    run_id = trigger(page, "monitoring", dates={"interval_end": "2013-05-01"}, choices={"source": "batch"})
    run = stack.wait_run("monitoring", run_id, timeout=300)
    states = stack.states("monitoring", run_id)
    assert run["state"] == "success" and states == {"detect_drift": "success", "decide_retrain": "success"}
    shows_state(page, "monitoring", run_id, "Success")
    events = stack.api(f"/assets/events?source_dag_id=monitoring&source_run_id={urllib.parse.quote(run_id)}")
    assert [e["extra"]["interval_end"][:10] for e in events["asset_events"]] == ["2013-05-01"]
    # The scheduler trains on that event (Jan-Apr), registers v2, and its deploy waits for a person.
    deploy_run = wait_for_a_person(stack, "deploy", timeout=600)
    assert stack.versions() == ["1", "2"] and stack.aliases()["challenger"] == "2"
    answer(page, "deploy", deploy_run, "Reject")
    stack.wait_run("deploy", deploy_run, timeout=120)
    states = stack.states("deploy", deploy_run)
    assert states["approve"] == "success" and states["start_rollout"] == "skipped", states
    assert stack.aliases()["champion"] == "1"
    with urllib.request.urlopen(f"{stack.server}/ready", timeout=10) as resp:
        ready = json.loads(resp.read())
    assert ready["champion"]["version"] == "1" and ready["challenger"] is None
    REACHED.add("monitored")


def test_the_models_page_shows_what_serves_the_rollout_the_verdicts_and_the_last_retrain(stack, page):
    """The plugin's page, as a person opens it from the UI's navigation: the data, not only a page."""
    needs("monitored")
    views = stack.api("/plugins")["plugins"]
    (mlops,) = [p for p in views if p["name"] == "mlops"]
    assert [v["href"] for v in mlops["external_views"]] == ["/mlops/models"]
    assert stack.api("/plugins/importErrors")["import_errors"] == []
    page.goto("/")  # signed in by the UI, as a person is
    page.get_by_role("button", name="Browse").click()
    page.get_by_role("menuitem", name="Models").click()
    frame = page.frame_locator("iframe")
    section = frame.locator(f"section[data-model='{MODEL}']")
    section.wait_for()
    assert section.locator("[data-field=champion]").inner_text() == "v1"
    assert section.locator("[data-field=challenger]").inner_text() == "v2"  # rejected: still the challenger
    verdict = section.locator("[data-field=verdict]").inner_text()
    assert "last window to 2013-05-01" in verdict and "drift share 0." in verdict, verdict
    assert section.locator("tr[data-row=monitoring]").count() >= 1
    assert section.locator("svg polyline.drift_share").get_attribute("points")  # the chart has a line
    rollout = section.locator("[data-field=rollout]").inner_text()
    assert "decided" in rollout, rollout  # v1's approved rollout (v2's was rejected before it began)
    retrain = section.locator("[data-field=retrain]").inner_text()
    assert "monitoring of the window to 2013-05-01" in retrain and "success" in retrain, retrain
    shot = stack.home.parent / "models-page.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    # behind Airflow's own sign-in (here every user is an admin): a forged token gets nothing
    forged = urllib.request.Request(
        f"{stack.airflow}/mlops/models", headers={"Authorization": "Bearer forged"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(forged, timeout=30)
    assert refused.value.code == 403


def test_make_down_stops_every_process(stack):
    groups = [int(p.read_text()) for p in (stack.home / "run").glob("*.pid")]
    down = stack.make("down", timeout=120)
    assert down.returncode == 0, down.stderr
    assert all(f"stopped {name}" in down.stdout for name in ("airflow", "mlflow", "server"))
    for url in (stack.airflow, stack.mlflow, stack.server):  # nothing listens: refused, not an HTTP error
        port = int(url.rsplit(":", 1)[1])
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=3):
            pass
    for group in groups:  # every process of every group is gone, the scheduler's workers included
        with pytest.raises(ProcessLookupError):
            os.killpg(group, 0)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
