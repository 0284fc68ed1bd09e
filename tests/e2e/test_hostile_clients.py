"""The model server against clients that try to hurt it or each other (issue 17, highs 1, 3 and 4).

One real ``mlops serve`` process, logging to a PostgreSQL database of its own, with the three
scoped tokens set: each test is a way a client of ``/predict`` could exhaust the server, fail
its neighbours' requests, read their data, or steer monitoring and rollouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from conftest import SERVING_MODEL, ServerProcess, reset_deployment

pytestmark = pytest.mark.e2e

PG = "postgresql+psycopg2://postgres@127.0.0.1:5432"
DATABASE = "mlops_hostile"
TOKENS = {
    "predict": "predict-token-0a1b2c3d",
    "feedback": "feedback-token-4e5f6a7b",
    "admin": "admin-token-8c9d0e1f",
}
AUTH = {scope: {"Authorization": f"Bearer {token}"} for scope, token in TOKENS.items()}
MAX_BODY = 1024 * 1024
MAX_PENDING = 8
MAX_BUFFERED = 2 * MAX_BODY
BODY_TIMEOUT = 3
HEADER_TIMEOUT = 3
SEND_TIMEOUT = 3
LIMIT_CONCURRENCY = 48


@pytest.fixture(scope="module")
def log_db():
    """A database of its own, with a trigger that fails any insert of routing key 'poison': a
    request the API accepts but the log refuses (a full disk, a constraint), for real."""
    admin = sa.create_engine(f"{PG}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"))
        conn.execute(sa.text(f"CREATE DATABASE {DATABASE}"))
    url = f"{PG}/{DATABASE}"
    from pipelines.prediction_log import SqlPredictionLog

    SqlPredictionLog(url, SERVING_MODEL).close()  # the tables, as the server makes them
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE FUNCTION refuse_poison() RETURNS trigger AS $$ BEGIN"
                " RAISE EXCEPTION 'refused row for key %', NEW.routing_key; END $$ LANGUAGE plpgsql"
            )
        )
        conn.execute(
            sa.text(
                "CREATE TRIGGER poison BEFORE INSERT ON mlops_predictions FOR EACH ROW"
                " WHEN (NEW.routing_key = 'poison') EXECUTE FUNCTION refuse_poison()"
            )
        )
    yield url, engine
    engine.dispose()
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"))
    admin.dispose()


@pytest.fixture(scope="module")
def server(serving_home, log_db, tmp_path_factory):
    reset_deployment(serving_home["settings"])
    home = tmp_path_factory.mktemp("hostile")
    proc = ServerProcess(
        serving_home["env"],
        home / "server.log",
        MLOPS_PREDICTION_LOG=log_db[0],
        MLOPS_SERVING_TOKEN=TOKENS["predict"],
        MLOPS_SERVING_FEEDBACK_TOKEN=TOKENS["feedback"],
        MLOPS_SERVING_ADMIN_TOKEN=TOKENS["admin"],
        MLOPS_SERVING_SECRET="deployment-secret-for-tests-0123",
        MLOPS_SERVING_MAX_BODY_BYTES=str(MAX_BODY),
        MLOPS_SERVING_MAX_PENDING=str(MAX_PENDING),
        MLOPS_SERVING_MAX_BUFFERED_BYTES=str(MAX_BUFFERED),
        MLOPS_SERVING_BODY_TIMEOUT_SECONDS=str(BODY_TIMEOUT),
        MLOPS_SERVING_MAX_WAIT_MS="100",  # concurrent requests share one micro-batch
        MLOPS_SERVING_LIMIT_CONCURRENCY=str(LIMIT_CONCURRENCY),
        MLOPS_SERVING_HEADER_TIMEOUT_SECONDS=str(HEADER_TIMEOUT),
        MLOPS_SERVING_SEND_TIMEOUT_SECONDS=str(SEND_TIMEOUT),
    )
    proc.env["MLOPS_HOME"] = str(home / "mlops")
    proc.start()
    deadline = time.time() + 60
    while not httpx.get(f"{proc.url}/ready").json()["ready"]:
        assert time.time() < deadline, proc.log_path.read_text()[-2000:]
        time.sleep(0.2)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def record(april_rows) -> dict:
    return april_rows[0][0]


def predict(url: str, body: dict, scope: str = "predict") -> httpx.Response:
    return httpx.post(f"{url}/predict", json=body, headers=AUTH[scope], timeout=30)


def peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))


def raw_request(port: int, head: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(head)
    return sock


def still_open_at(held: list[socket.socket], deadline: float) -> int:
    """How many of ``held`` the server has not closed by ``deadline`` (their answers read away)."""
    still_open = 0
    for sock in held:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            while sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        except TimeoutError:
            still_open += 1
    return still_open


def read_status(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1]), data


# -- high 1: the body limit holds for chunked uploads, and the server holds a bounded number --------
def test_a_chunked_body_over_the_limit_is_refused_while_it_streams(server):
    """Regression: without Content-Length the whole body was read, then measured (256 MiB read
    against an 8 MiB limit). Now the server answers 413 at the limit, closes the connection and
    reads no further (the client sees the 413, or a reset if it was still sending)."""
    before = peak_rss_kib(server.proc.pid)
    head = (
        f"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKENS['predict']}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    sock = raw_request(server.port, head)
    chunk = b"a" * 65536
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    sent, status, response = 0, None, b""
    try:
        while sent < 64 * MAX_BODY:  # 64 times the limit, unless the server stops reading first
            sock.sendall(framed)
            sent += len(chunk)
        status, response = read_status(sock)
    except OSError:  # the server answered 413 and closed: the rest of the body is never read
        pass
    sock.close()
    assert status in (None, 413), response[:300]
    assert sent < 16 * MAX_BODY, f"the server read {sent / MAX_BODY:.0f} MiB of a body over 1 MiB"
    assert httpx.get(f"{server.url}/health").status_code == 200
    grown_mib = (peak_rss_kib(server.proc.pid) - before) / 1024
    assert grown_mib < 32, f"peak memory grew {grown_mib:.0f} MiB for a body cut at 1 MiB"


def test_requests_beyond_the_pending_cap_get_503_with_retry_after(server, record):
    """Slow clients hold requests open; beyond ``MLOPS_SERVING_MAX_PENDING`` the server says
    503 at once (before reading any body) instead of holding ever more bodies in memory."""
    body = json.dumps({"records": [record]}).encode()
    head = (
        f"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKENS['predict']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    held = [raw_request(server.port, head + body[:10]) for _ in range(MAX_PENDING)]  # bodies half sent
    try:
        time.sleep(0.5)
        refused = predict(server.url, {"records": [record]})
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "1"
        assert "retry" in refused.json()["detail"]
        for sock in held:  # the held requests complete normally once their bodies arrive
            sock.sendall(body[10:])
        assert [read_status(sock)[0] for sock in held] == [200] * MAX_PENDING
    finally:
        for sock in held:
            sock.close()
    assert predict(server.url, {"records": [record]}).status_code == 200


def test_clients_trickling_bodies_lose_their_slots_at_the_deadline(server, record):
    """Regression (review): MAX_PENDING connections each sending one byte held every slot for ever,
    and every other client got 503 while /ready said ready. Now a body that does not arrive within
    MLOPS_SERVING_BODY_TIMEOUT_SECONDS is a 408 and its slot is free again."""
    head = (
        f"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKENS['predict']}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    ).encode()
    held = [raw_request(server.port, head) for _ in range(MAX_PENDING)]
    try:
        time.sleep(0.5)
        assert predict(server.url, {"records": [record]}).status_code == 503  # every slot is taken
        statuses = [read_status(sock)[0] for sock in held]  # answered at the deadline, not later
        assert statuses == [408] * MAX_PENDING
        assert predict(server.url, {"records": [record]}).status_code == 200
    finally:
        for sock in held:
            sock.close()


def test_connections_that_never_finish_their_headers_are_closed_at_the_deadline(server):
    """A known gap of the second review: uvicorn had no deadline on a request's headers, so
    connections sending them slowly (or never) filled ``limit_concurrency`` and every other
    client got a 503 for as long as they stayed open."""
    slow = [
        raw_request(server.port, b"GET /health HTTP/1.1\r\nHost: x\r\n") for _ in range(LIMIT_CONCURRENCY)
    ]
    slow.append(socket.create_connection(("127.0.0.1", server.port), timeout=30))  # sends nothing
    try:
        time.sleep(0.5)
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 503  # the limit is taken
        time.sleep(HEADER_TIMEOUT + 1.5)
        for sock in slow:
            sock.settimeout(5)
            assert sock.recv(1024) == b""  # closed by the server
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
    finally:
        for sock in slow:
            sock.close()


def test_a_request_refused_before_its_body_is_read_gives_up_its_connection(server):
    """Review 4, H-B: a 401 answered without reading the body kept the connection alive; one more
    body byte then cancelled uvicorn's keep-alive timer for good, so clients without any token
    held every connection slot and ``/health`` was a 503 for as long as they liked."""
    head = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000000\r\n\r\n"
    )
    held = [raw_request(server.port, head) for _ in range(LIMIT_CONCURRENCY - 4)]  # all but a few slots
    try:
        for sock in held:
            assert read_status(sock)[0] == 401
            with contextlib.suppress(OSError):  # the server may have closed it already
                sock.sendall(b"{")
        deadline = time.monotonic() + 8  # longer than uvicorn's 5 s keep-alive timer
        still_open = still_open_at(held, deadline)
        assert still_open == 0, f"{still_open} of {len(held)} connections still held"
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
    finally:
        for sock in held:
            sock.close()


@pytest.mark.parametrize("filler", [b"\r\n", b"\r\n" * 50], ids=["one-crlf", "crlf-every-byte"])
def test_line_breaks_between_requests_do_not_hold_a_connection(server, filler):
    """Review 5, H-1: after a complete request, a bare CRLF cancelled uvicorn's keep-alive timer and
    never began a request (the parser skips line breaks before a request line), so no header
    deadline ran either: clients without a token held every slot with two bytes each."""
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    held = [raw_request(server.port, head) for _ in range(LIMIT_CONCURRENCY - 4)]
    try:
        for sock in held:
            assert read_status(sock)[0] == 401
        for chunk in [filler[i : i + 2] for i in range(0, len(filler), 2)]:  # one line break at a time
            for sock in held:
                with contextlib.suppress(OSError):
                    sock.sendall(chunk)
            time.sleep(0.02)
        deadline = time.monotonic() + HEADER_TIMEOUT + 3  # past the header deadline, and keep-alive's 5 s
        still_open = still_open_at(held, deadline)
        assert still_open == 0, f"{still_open} of {len(held)} connections still held"
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
    finally:
        for sock in held:
            sock.close()


def established(sock: socket.socket) -> bool:
    """Whether the kernel still has ``sock`` connected (state 1 of ``TCP_INFO``), read or not."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == 1


def gone_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server drops ``sock`` within ``seconds`` (keep-alive's 5 s, deadlines, slack)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and established(sock):
        time.sleep(0.2)
    return not established(sock)


def owing_unread_answers(port: int) -> socket.socket:
    """A connection owed 600 answers (~85 kB, under uvloop's 64 KiB mark once the kernel holds its
    share) that it never reads: a tiny window and small segments, a few requests queued at a time."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # before connect
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(10)
    for _ in range(30):
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 20)
        time.sleep(0.1)
    return sock


def test_a_client_that_never_reads_its_answers_loses_its_connection(server, record):
    """Review 6: once answers waited unread (pipelined requests, a tiny receive window), uvicorn
    waited for its buffer to drain with no deadline, and no other timer ran on the connection (no
    answer completed, every request had arrived whole): it held its slot for as long as the client
    liked. Now a connection whose answers are not read within MLOPS_SERVING_SEND_TIMEOUT_SECONDS
    is reset."""
    body = json.dumps({"records": [record] * 3000}).encode()  # ~160 kB of answer each
    request = (
        f"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKENS['predict']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # before connect: a small window
    sock.connect(("127.0.0.1", server.port))
    sock.settimeout(30)
    try:
        sock.sendall(request * 16)  # 2.5 MB of answers: more than the kernel and uvloop buffer
        assert gone_within(sock, 60), "a connection whose answers nobody reads is still held"
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
    finally:
        sock.close()


def test_answers_left_unread_under_the_buffer_mark_do_not_hold_a_connection(server):
    """Review 6, the send deadline's bypass: answers owed but under uvloop's 64 KiB high-water mark
    never pause writing, so no send deadline ran; every answer completed, uvicorn's keep-alive timer
    fired and called close(), which waits for a buffer nobody reads: the slot was never given back.
    Now a connection that has not gone within MLOPS_SERVING_SEND_TIMEOUT_SECONDS of being closed
    is reset."""
    sock = owing_unread_answers(server.port)
    try:
        assert gone_within(sock, 5 + SEND_TIMEOUT + 10), (
            "a connection whose answers nobody reads is still held"
        )
    finally:
        sock.close()


def test_a_websocket_upgrade_does_not_escape_the_deadlines(server):
    """Review 7: answers owed under the buffer mark, then `Upgrade: websocket`: uvicorn handed the
    connection to its WebSocket protocol (websockets is installed), outside every deadline here; the
    app has no WebSocket route, the handshake's 403 closed it, and that close waited for the unread
    buffer for ever. The server speaks no WebSocket now: the upgrade is a plain request."""
    sock = owing_unread_answers(server.port)
    try:
        time.sleep(0.5)
        sock.sendall(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        assert gone_within(sock, 5 + SEND_TIMEOUT + 10), (
            "an upgraded connection whose answers nobody reads is still held"
        )
    finally:
        sock.close()


def test_a_client_pipelining_without_end_is_reset(server):
    """Review 6: uvicorn read on while answers completed, queueing every pipelined request it had
    parsed: one client without a token sending megabytes of `GET /health` made the server hold
    hundreds of thousands of requests. Beyond MAX_PIPELINED queued requests the connection is reset."""
    pipelined = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 2000
    before = peak_rss_kib(server.proc.pid)
    answered = []
    for _ in range(4):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        with contextlib.suppress(OSError):  # reset while sending
            for _ in range(100):  # 6.6 MB
                sock.sendall(pipelined)
        data = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                data += chunk
        answered.append(data.count(b"HTTP/1.1 200"))
        sock.close()
    grown_mib = (peak_rss_kib(server.proc.pid) - before) / 1024
    assert max(answered) < 1000, answered  # reset early (MAX_PIPELINED is 64), not answered to the end
    assert grown_mib < 64, f"the server grew {grown_mib:.0f} MiB"
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200


def test_bodies_held_at_once_stay_under_the_memory_cap(server):
    """Regression (review): the pending cap alone let 24 clients hold 24 bodies of 8 MiB (and their
    parsed objects) at once, past the pod's memory limit. The bytes held are capped: beyond
    MLOPS_SERVING_MAX_BUFFERED_BYTES a 503 with Retry-After, and the others are unaffected."""
    size = int(MAX_BODY * 0.9)
    head = (
        f"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKENS['predict']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
    ).encode()
    part = b" " * (size - 100)  # most of each body, not all: the server holds it
    held = [raw_request(server.port, head + part) for _ in range(2)]
    try:
        time.sleep(0.5)
        third = raw_request(server.port, head + part)  # 2.7 MiB held would pass the 2 MiB cap
        status, response = read_status(third)
        third.close()
        assert status == 503 and b"retry-after: 1" in response.lower(), response[:300]
        for sock in held:  # the first two finish (an empty JSON body: a 400, but read and answered)
            sock.sendall(b" " * 99 + b"x")
        assert [read_status(sock)[0] for sock in held] == [400, 400]
    finally:
        for sock in held:
            sock.close()


# -- high 3: one client cannot fail its neighbours or read their data -------------------------------
@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"routing_key": "user\x00-1"}, "routing_key"),
        ({"routing_key": "k" * 257}, "routing_key"),
        ({"routing_key": "line\nbreak"}, "routing_key"),
        ({"records": [{"origin": "JF\x00K"}]}, "origin"),
        ({"records": [{"origin": "J" * 2000}]}, "origin"),
    ],
    ids=["nul-key", "long-key", "newline-key", "nul-value", "long-value"],
)
def test_text_the_log_cannot_hold_is_a_422_naming_the_field(server, record, change, named):
    body = {"records": [record], **change}
    if "records" in change:
        body["records"] = [{**record, **change["records"][0]}]
    response = predict(server.url, body)
    assert response.status_code == 422, response.text
    assert named in response.text


def test_a_deeply_nested_value_is_a_422_not_a_500(server, record):
    """Regression: ``repr`` of a value nested ~1000 deep raised RecursionError, a 500."""
    nested = "[" * 1000 + "]" * 1000
    body = json.dumps({"records": [{**record, "origin": "NESTED"}]}).replace('"NESTED"', nested)
    response = httpx.post(
        f"{server.url}/predict", content=body, headers={**AUTH["predict"], "content-type": "application/json"}
    )
    assert response.status_code == 422, response.text[:300]
    assert "must be a string, got a list" in response.text


async def _concurrently(url: str, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, headers=AUTH["predict"], timeout=60) as http:
        return await asyncio.gather(*(http.post("/predict", json=b) for b in bodies))


def test_a_request_the_log_refuses_fails_alone_and_leaks_nothing(server, record, log_db):
    """Regression: one request the PostgreSQL log refused failed its whole micro-batch (every
    request in it got a 503), and the 503 carried SQLAlchemy's message with the bound parameters
    of every request in the batch: other clients' inputs and routing keys."""
    engine = log_db[1]
    bodies = [{"records": [record], "routing_key": f"neighbour-{i}"} for i in range(MAX_PENDING - 2)]
    bodies.insert(3, {"records": [record], "routing_key": "poison"})
    answers = asyncio.run(_concurrently(server.url, bodies))
    by_key = {b["routing_key"]: a for b, a in zip(bodies, answers, strict=True)}
    poisoned = by_key.pop("poison")
    assert poisoned.status_code == 503
    detail = poisoned.json()["detail"]
    assert "retry" in detail and "request " in detail
    for leak in ("neighbour", "INSERT", "refused row", "sqlalchemy", "psycopg", record["origin"]):
        assert leak not in poisoned.text, leak
    assert {k: a.status_code for k, a in by_key.items()} == dict.fromkeys(by_key, 200)
    ids = [a.json()["request_id"] for a in by_key.values()]
    with engine.connect() as conn:
        logged = conn.execute(
            sa.text("SELECT count(*) FROM mlops_predictions WHERE request_id = ANY(:ids)"), {"ids": ids}
        ).scalar()
    assert logged == len(ids)  # every neighbour that got a 200 is in the log
    log_text = server.log_path.read_text()
    assert "refused row for key poison" in log_text  # the cause is in the server's own log


@pytest.mark.parametrize(
    ("item", "named"),
    [
        ({"row": 2**31, "label": 1}, "row"),
        ({"row": -1, "label": 1}, "row"),
        ({"request_id": "a\x00b", "label": 1}, "request_id"),
        ({"request_id": "0" * 48, "label": 1}, "is not a request id this server issued"),
        ({"request_id": "f" * 32, "label": 0}, "is not a request id this server issued"),
    ],
    ids=["row-2^31", "row-negative", "nul-id", "forged-id", "unsigned-id"],
)
def test_feedback_the_log_cannot_hold_or_for_unknown_requests_is_a_422(server, item, named):
    """Regression: row >= 2^31 and NUL in request_id were 500s from PostgreSQL; feedback for ids
    the server never issued was stored (and could outvote the real label)."""
    body = {"feedback": [{"request_id": item.get("request_id", "0" * 48), **item}]}
    response = httpx.post(f"{server.url}/feedback", json=body, headers=AUTH["feedback"], timeout=30)
    assert response.status_code == 422, response.text
    assert named in response.text


def test_feedback_for_an_issued_request_is_stored(server, record, log_db):
    answer = predict(server.url, {"records": [record, record]}).json()
    item = {"request_id": answer["request_id"], "row": 1, "label": 1}
    response = httpx.post(f"{server.url}/feedback", json={"feedback": [item]}, headers=AUTH["feedback"])
    assert response.json() == {"recorded": 1}
    with log_db[1].connect() as conn:
        label = conn.execute(
            sa.text("SELECT label FROM mlops_feedback WHERE request_id = :r AND row = 1"),
            {"r": answer["request_id"]},
        ).scalar()
    assert label == 1


# -- high 4: each credential does only its own job ---------------------------------------------------
def test_each_token_grants_only_its_scope(server, record):
    url = server.url
    with_time = {"records": [record], "event_time": "2013-04-02T10:00:00Z"}
    plain = {"records": [record]}
    issued = predict(url, plain).json()["request_id"]
    feedback = {"feedback": [{"request_id": issued, "row": 0, "label": 0}]}
    matrix = {}
    for scope, headers in AUTH.items():
        with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
            matrix[scope] = (
                http.post("/predict", json=plain).status_code,
                http.post("/predict", json=with_time).status_code,
                http.post("/feedback", json=feedback).status_code,
                http.get("/metrics").status_code,
            )
    assert matrix == {
        "predict": (200, 403, 403, 403),  # a client scores; it cannot label or replay history
        "feedback": (200, 200, 200, 403),  # the labeller / replayer
        "admin": (403, 403, 403, 200),  # Prometheus and operators read; they do not score
    }
    denied = httpx.post(f"{url}/feedback", json=feedback, headers=AUTH["predict"])
    assert "feedback" in denied.json()["detail"]


def test_ready_tells_a_probe_only_whether_to_route_here(server):
    """Regression: /ready was open and showed the rollout id (enough to compute the routing hash)."""
    anonymous = httpx.get(f"{server.url}/ready")
    assert anonymous.status_code == 200 and anonymous.json() == {"ready": True}
    as_client = httpx.get(f"{server.url}/ready", headers=AUTH["predict"]).json()
    assert as_client == {"ready": True}
    details = httpx.get(f"{server.url}/ready", headers=AUTH["admin"]).json()
    assert details["champion"]["version"] == "1" and "rollout_id" in details


# -- medium: a log that cannot be written makes the server not ready, until it can be again --------
def test_a_prediction_log_outage_fails_readiness_until_the_log_is_back(server, log_db, record):
    """Regression: /ready said ready while every /predict was a 503 (the log's database was gone), so
    the Service kept sending traffic to a replica that could acknowledge nothing."""
    admin = sa.create_engine(f"{PG}/postgres", isolation_level="AUTOCOMMIT")
    outage = [
        f"ALTER DATABASE {DATABASE} ALLOW_CONNECTIONS false",
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{DATABASE}'",
    ]
    try:
        log_db[1].dispose()  # the fixture's own connections go too
        with admin.connect() as conn:
            for statement in outage:
                conn.execute(sa.text(statement))
        failed = predict(server.url, {"records": [record]})
        assert failed.status_code == 503, failed.text
        assert "postgres" not in failed.text.lower()  # the cause is in the server's log only
        ready = httpx.get(f"{server.url}/ready", timeout=30)
        assert ready.status_code == 503 and ready.json() == {"ready": False}
        details = httpx.get(f"{server.url}/ready", headers=AUTH["admin"], timeout=30).json()
        assert details["ready"] is False and "OperationalError" in details["prediction_log_error"]
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"ALTER DATABASE {DATABASE} ALLOW_CONNECTIONS true"))
        admin.dispose()
    deadline = time.time() + 15  # the log is pinged again at most every 2 s
    while (back := httpx.get(f"{server.url}/ready", headers=AUTH["admin"], timeout=30)).status_code != 200:
        assert time.time() < deadline, back.text
        time.sleep(0.5)
    assert back.json()["prediction_log_error"] is None, back.text
    assert predict(server.url, {"records": [record]}).status_code == 200


# -- review finding: a value the model cannot score fails only its own request ------------------------
def test_a_value_the_model_cannot_score_fails_only_its_own_request(serving_home, april_rows, tmp_path):
    """Regression: with the logistic-regression estimator a finite 1.7e308 overflows once scaled,
    predict_proba raised, and every request of that micro-batch got a 503."""
    import shutil

    import pandas as pd
    import skops.io

    from pipelines.config import load_config
    from pipelines.modeling import build_pipeline
    from pipelines.serving.registry import download_version

    config = load_config(serving_home["config"])
    training = config.training.model_copy(update={"estimator": "logistic_regression"})
    records, labels = april_rows
    pipe = build_pipeline(config.dataset, training)
    pipe.fit(pd.DataFrame(records[:2000])[config.dataset.features.all], labels[:2000])
    folder = tmp_path / "lr"
    shutil.copytree(
        download_version(serving_home["settings"], SERVING_MODEL, "1", tmp_path / "cache"), folder
    )
    skops.io.dump(pipe, folder / "model.skops")  # the same signature, another estimator
    proc = ServerProcess(
        serving_home["env"], tmp_path / "server.log",
        MLOPS_SERVING_MODEL_DIR=str(folder), MLOPS_SERVING_VERSION="1",
        MLOPS_SERVING_LOG_PREDICTIONS="false", MLOPS_SERVING_MAX_WAIT_MS="200",
    )  # fmt: skip
    proc.env["MLOPS_HOME"] = str(tmp_path / "home")
    proc.start().wait_ready()
    # the largest double, on a feature whose training std is below 1 (precip, in inches): scaled,
    # it overflows to infinity and the model's input check raises
    hostile = {**records[0], "precip": 1.7976931348623157e308}

    async def round_() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=proc.url, timeout=30) as http:
            posts = [http.post("/predict", json={"records": [r]}) for r in records[1:6]]
            posts.append(http.post("/predict", json={"records": [hostile]}))
            return await asyncio.gather(*posts)

    try:
        for _ in range(5):
            *victims, attacker = asyncio.run(round_())
            assert [v.status_code for v in victims] == [200] * 5, [v.text[:200] for v in victims]
            assert attacker.status_code == 422 and "cannot score these values" in attacker.json()["detail"]
    finally:
        proc.stop()


def test_feedback_counts_against_the_same_bounds_as_predict(server, record):
    """Regression (second review): /feedback skipped the pending cap and the parse slots, so
    clients of /feedback alone could hold every byte and parse at will."""
    head = (
        f"POST /feedback HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKENS['feedback']}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    ).encode()
    held = [raw_request(server.port, head) for _ in range(MAX_PENDING)]
    try:
        time.sleep(0.5)
        assert predict(server.url, {"records": [record]}).status_code == 503  # feedback took the slots
        assert [read_status(sock)[0] for sock in held] == [408] * MAX_PENDING
    finally:
        for sock in held:
            sock.close()
    assert predict(server.url, {"records": [record]}).status_code == 200
