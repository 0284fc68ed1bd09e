"""The model server's credentials: scoped tokens, the deployment secret, signed ids, salted routing."""

from __future__ import annotations

import stat

import pytest

from pipelines.errors import ConfigError
from pipelines.serving import security
from pipelines.serving.policy import Policy, route


def test_request_ids_are_signed_by_the_deployment_secret():
    secret, other = b"a" * 32, b"b" * 32
    rid = security.issue_request_id(secret)
    assert len(rid) == security.REQUEST_ID_LENGTH and int(rid, 16) >= 0
    assert security.issued_here(secret, rid)
    assert not security.issued_here(other, rid)  # another deployment's id
    forged = rid[:32] + ("0" if rid[32] != "0" else "1") + rid[33:]
    assert not security.issued_here(secret, forged)
    assert not security.issued_here(secret, rid[:32])  # an unsigned (old-style) id
    assert not security.issued_here(secret, rid + "0")
    assert security.issue_request_id(secret) != rid


def test_tokens_come_from_env_or_files_and_must_differ(tmp_path):
    (tmp_path / "admin").write_text("admin-token\n")
    tokens = security.tokens_from_env(
        {"MLOPS_SERVING_TOKEN": "p-token", "MLOPS_SERVING_ADMIN_TOKEN_FILE": str(tmp_path / "admin")}
    )
    assert tokens == {"predict": "p-token", "admin": "admin-token"}
    assert security.tokens_from_env({}) == {}
    with pytest.raises(ConfigError, match="must differ"):
        security.tokens_from_env({"MLOPS_SERVING_TOKEN": "same", "MLOPS_SERVING_FEEDBACK_TOKEN": "same"})
    with pytest.raises(ConfigError, match="MLOPS_SERVING_FEEDBACK_TOKEN_FILE cannot be read"):
        security.tokens_from_env({"MLOPS_SERVING_FEEDBACK_TOKEN_FILE": str(tmp_path / "missing")})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="MLOPS_SERVING_TOKEN_FILE is empty"):
        security.tokens_from_env({"MLOPS_SERVING_TOKEN_FILE": str(tmp_path / "empty")})


def test_the_secret_is_configured_or_made_once_and_kept_private(tmp_path):
    assert security.secret_from_env({"MLOPS_SERVING_SECRET": "x" * 16}, tmp_path) == b"x" * 16
    with pytest.raises(ConfigError, match="too short"):
        security.secret_from_env({"MLOPS_SERVING_SECRET": "short"}, tmp_path)
    made = security.secret_from_env({}, tmp_path)
    assert len(made) == 64
    assert security.secret_from_env({}, tmp_path) == made  # a restart keeps its ids valid
    mode = stat.S_IMODE((tmp_path / "serving" / "secret").stat().st_mode)
    assert mode == 0o600


def test_the_secret_salts_sticky_routing():
    policy = Policy(strategy="canary", challenger_version="2", share=0.5, rollout_id="r1")
    keys = [f"user-{i}" for i in range(2000)]
    public = [route(policy, k) for k in keys]
    salted = [route(policy, k, salt=b"s" * 32) for k in keys]
    assert [route(policy, k, salt=b"s" * 32) for k in keys] == salted  # still sticky
    differ = sum(a != b for a, b in zip(public, salted, strict=True))
    assert 800 < differ < 1200  # a client that knows the rollout id cannot tell where a key lands
    assert 0.45 < salted.count("challenger") / len(keys) < 0.55


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"Bearer p", {"predict"}),
        (b"Bearer f", {"predict", "feedback"}),
        (b"Bearer a", {"admin"}),
        (b"Bearer x", None),
        (b"p", None),
        (b"", None),
    ],
)
def test_each_token_grants_its_scopes(header, expected):
    auth = security.ScopedBearerAuth(None, {"predict": "p", "feedback": "f", "admin": "a"})
    assert auth.scopes_of(header) == expected


def test_without_auth_every_scope_is_allowed():
    assert security.may({}, security.ADMIN)
    assert not security.may({security.SCOPES_KEY: {"predict"}}, security.FEEDBACK)
    assert security.may({security.SCOPES_KEY: {"predict", "feedback"}}, security.FEEDBACK)
