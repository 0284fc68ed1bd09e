"""Infra validation's concurrency check against a real HTTP server that mixes up requests in flight.

The server below answers each request with the probability of whichever row it read last: right
for one client at a time, wrong as soon as two requests overlap, the bug a batching server can have
(``tests/e2e/test_deploy.py`` runs the whole step against ``mlops serve``).
"""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import httpx
import numpy as np
import pytest

from conftest import DEFAULT_CONFIG, QuietHandler, http_stub
from pipelines.config import load_config
from pipelines.errors import InfraValidationFailed
from pipelines.steps.validate_serving import check_concurrent

EXPECTED = np.linspace(0.1, 0.9, 20)
RECORDS = [{"row": i} for i in range(len(EXPECTED))]


class _LastRowWins(QuietHandler):
    last: list[int] = [0]

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.last[0] = body["records"][0]["row"]
        time.sleep(0.02)  # scoring: another request may arrive meanwhile and overwrite `last`
        answer = json.dumps({"predictions": [{"probability": float(EXPECTED[self.last[0]])}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


@pytest.fixture(scope="module")
def mixing_server():
    with http_stub(_LastRowWins) as url:
        yield url


def _ctx(concurrency: int) -> SimpleNamespace:
    config = load_config(DEFAULT_CONFIG)
    deploy = config.deploy.model_copy(update={"infra_concurrency": concurrency, "infra_queries": 20})
    return SimpleNamespace(config=config.model_copy(update={"deploy": deploy}))


def test_one_client_at_a_time_gets_every_row_right(mixing_server):
    with httpx.Client() as client:
        checked = check_concurrent(_ctx(1), mixing_server, client, RECORDS, EXPECTED)
    assert checked["concurrent_requests"] == 20 and checked["concurrent_p95_ms"] >= 20


def test_answers_mixed_up_between_requests_in_flight_fail_and_say_so(mixing_server):
    with httpx.Client() as client, pytest.raises(InfraValidationFailed) as failed:
        check_concurrent(_ctx(8), mixing_server, client, RECORDS, EXPECTED)
    message = str(failed.value)
    assert (
        message.startswith("with 8 clients at once, row ")
        and "concurrent requests got each other's" in message
    )


def test_a_server_that_is_gone_fails_as_infra_validation():
    with (
        httpx.Client() as client,
        pytest.raises(InfraValidationFailed, match=r"with 8 clients at once, query \d+"),
    ):
        check_concurrent(_ctx(8), "http://127.0.0.1:9", client, RECORDS, EXPECTED)  # nothing listens on 9
