"""Who may do what on the model server, and the ids only this deployment can mint.

Three credentials, each a bearer token of its own (``MLOPS_SERVING_*TOKEN`` or ``*_TOKEN_FILE``):

==========  ==================================  ============================================
token       environment variable                grants
==========  ==================================  ============================================
predict     ``MLOPS_SERVING_TOKEN``             ``POST /predict``, V2's ``infer``
feedback    ``MLOPS_SERVING_FEEDBACK_TOKEN``    ``POST /feedback`` and ``event_time`` on
                                                ``/predict`` (both decide what monitoring and
                                                rollout analysis see), and ``/predict``
admin       ``MLOPS_SERVING_ADMIN_TOKEN``       ``/metrics`` and ``/ready``'s details
==========  ==================================  ============================================

With no token set, auth is off (the embedded profile on loopback). With any set, every path but
``/health``, ``/ready`` and V2's ``/v2/health/*`` needs a valid token (401); ``/models/<name>/...``
needs what the path without the prefix needs, and a path the token does not grant is a 403
that names the token it needs. ``/ready`` stays open for probes but says only ``ready`` without the
admin token: the rollout id, share and registry errors are for operators.

The deployment's secret (``MLOPS_SERVING_SECRET``, shared by every replica) signs request ids, so
``/feedback`` takes labels only for predictions this deployment made, and salts the sticky
routing hash, so nobody can choose a routing key that lands on the challenger.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from pipelines.errors import ConfigError

PREDICT, FEEDBACK, ADMIN = "predict", "feedback", "admin"
TOKEN_ENV = {
    PREDICT: "MLOPS_SERVING_TOKEN",
    FEEDBACK: "MLOPS_SERVING_FEEDBACK_TOKEN",
    ADMIN: "MLOPS_SERVING_ADMIN_TOKEN",
}
GRANTS = {PREDICT: {PREDICT}, FEEDBACK: {PREDICT, FEEDBACK}, ADMIN: {ADMIN}}
# What a path needs; a path not listed (the OpenAPI schema, its UIs, V2 metadata, unknown paths)
# needs any token. The same endpoints by model name (/models/<name>/..., V2's infer) need the same.
NEEDS = {"/predict": PREDICT, "/feedback": FEEDBACK, "/metrics": ADMIN}
NAMED = re.compile(r"/models/[^/]+/(predict|feedback)|/v2/models/[^/]+(?:/versions/[^/]+)?/(infer)")
OPEN_PATHS = frozenset({"/health", "/ready", "/v2/health/live", "/v2/health/ready"})


def needs(path: str) -> str | None:
    """The scope ``path`` needs, or None when any valid token will do."""
    if path in NEEDS:
        return NEEDS[path]
    if match := NAMED.fullmatch(path):
        return FEEDBACK if match.group(1) == "feedback" else PREDICT
    return None


SCOPES_KEY = "mlops.scopes"  # where the middleware leaves the request's scopes in the ASGI scope
SECRET_ENV = "MLOPS_SERVING_SECRET"
_SIGNATURE_HEX = 16
REQUEST_ID_LENGTH = 32 + _SIGNATURE_HEX


def _read(env: dict[str, str], name: str) -> str | None:
    """``name`` or the file ``name_FILE`` points at (a mounted Secret); empty means unset."""
    value = env.get(name) or None
    path = env.get(f"{name}_FILE")
    if path:
        try:
            value = Path(path).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE cannot be read: {exc.strerror}") from None
        if not value:
            raise ConfigError(f"{name}_FILE is empty")
    return value


def tokens_from_env(env: dict[str, str]) -> dict[str, str]:
    """The configured tokens by scope; two scopes may not share one token (it would grant both)."""
    tokens = {scope: token for scope, name in TOKEN_ENV.items() if (token := _read(env, name))}
    if len(set(tokens.values())) != len(tokens):
        raise ConfigError("the serving tokens must differ: one token for two scopes grants both")
    return tokens


def secret_from_env(env: dict[str, str], home: Path) -> bytes:
    """The deployment's secret; without one, a random secret kept in ``home`` (one machine only)."""
    value = _read(env, SECRET_ENV)
    if value:
        if len(value) < 16:
            raise ConfigError(f"{SECRET_ENV} is too short: use at least 16 random characters")
        return value.encode()
    path = home / "serving" / "secret"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = secrets.token_hex(32).encode()
    try:  # O_EXCL: two workers starting together keep the first one's secret
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    with os.fdopen(fd, "wb") as out:
        out.write(fresh)
    return fresh


def _sign(secret: bytes, nonce: str) -> str:
    return hmac.new(secret, nonce.encode(), hashlib.sha256).hexdigest()[:_SIGNATURE_HEX]


def issue_request_id(secret: bytes) -> str:
    """A request id: 32 random hex digits and their signature (16 hex digits)."""
    nonce = uuid.uuid4().hex
    return nonce + _sign(secret, nonce)


def issued_here(secret: bytes, request_id: str) -> bool:
    """True when this deployment's secret signed ``request_id``."""
    if len(request_id) != REQUEST_ID_LENGTH:
        return False
    nonce, signature = request_id[:32], request_id[32:]
    return hmac.compare_digest(signature, _sign(secret, nonce))


class ScopedBearerAuth:
    """Pure ASGI middleware: finds the scopes the bearer token grants (constant-time compares)."""

    def __init__(self, app, tokens: dict[str, str]):
        self.app = app
        self.expected = [(f"Bearer {token}".encode(), GRANTS[scope]) for scope, token in tokens.items()]
        self.configured = set(tokens)

    def scopes_of(self, header: bytes) -> set[str] | None:
        granted: set[str] | None = None
        for expected, scopes in self.expected:  # every compare runs: the time says nothing
            if secrets.compare_digest(header, expected):
                granted = scopes
        return granted

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        granted = self.scopes_of(dict(scope["headers"]).get(b"authorization", b""))
        if path not in OPEN_PATHS:
            if granted is None:
                return await _deny(send, 401, "missing or wrong bearer token")
            needed = needs(path)
            if needed is not None and needed not in granted:
                hint = (
                    f"set {TOKEN_ENV[needed]} on the server"
                    if not any(needed in GRANTS[s] for s in self.configured)
                    else f"use the {needed} token"
                )
                return await _deny(send, 403, f"this token does not grant {path}: {hint}")
        scope[SCOPES_KEY] = granted or set()
        await self.app(scope, receive, send)


async def _deny(send, status: int, message: str) -> None:
    headers = [(b"content-type", b"application/json")]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": orjson.dumps({"detail": message})})


def may(request_scope: Mapping[str, Any], needed: str) -> bool:
    """Whether the request holds ``needed`` (always, when auth is off)."""
    granted = request_scope.get(SCOPES_KEY)
    return granted is None or needed in granted
