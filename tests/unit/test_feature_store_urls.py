"""The online store's URL keeps what it says: Redis auth and TLS are passed on, never dropped."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.errors import ConfigError
from pipelines.feature_store import redis_connection_string

ROOT = Path(__file__).resolve().parents[2]


def test_password_user_tls_and_database_reach_feast():
    parsed = redis_connection_string("rediss://mlops:p%40ss@cache.internal:6380/2").split(",")
    assert parsed[0] == "cache.internal:6380"
    assert {"db=2", 'username="mlops"', 'password="p@ss"', "ssl=true"} <= set(parsed)
    assert "socket_timeout=5" in parsed and "socket_connect_timeout=5" in parsed
    plain = redis_connection_string("redis://127.0.0.1:6379/0")
    assert "ssl=true" not in plain and "password" not in plain


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://:a,b@host/0", "password cannot contain"),
        ("redis://host/zero", "database must be a number"),
    ],
)
def test_what_feast_cannot_carry_is_refused(url, message):
    with pytest.raises(ConfigError, match=message):
        redis_connection_string(url)


def test_feast_connects_to_the_real_redis_with_it():
    """The string goes through Feast's own parser to a redis-py client that answers PING."""
    import redis
    from feast.infra.online_stores.redis import RedisOnlineStore

    nodes, params = RedisOnlineStore._parse_connection_string(
        redis_connection_string("redis://127.0.0.1:6379/3")
    )
    client = redis.Redis(host=nodes[0]["host"], port=int(nodes[0]["port"]), **params)
    assert client.ping() is True
    assert client.connection_pool.connection_kwargs["socket_timeout"] == 5


def test_an_unknown_online_scheme_is_refused_not_made_a_file(tmp_path, monkeypatch):
    """Regression: anything but redis:// became a SQLite file named after the URL (rediss:// too)."""
    from pipelines.config import load_config
    from pipelines.feature_store import open_store
    from pipelines.settings import Settings

    config = load_config(ROOT / "pipelines" / "datasets" / "flights_features.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLOPS_FEATURE_ONLINE", "memcached://cache:11211")
    settings = Settings.from_env({"MLOPS_HOME": str(tmp_path / "home")})
    with pytest.raises(ConfigError, match="memcached:// is not supported"):
        open_store(settings, config.dataset.feature_store)
    assert not list(tmp_path.rglob("*11211*"))


@pytest.mark.parametrize("password", ["1.50", "1e3", "null", "true", '"quoted"', "plain", "s3cr3t!"])
def test_feast_reads_the_redis_password_exactly_as_the_url_gives_it(password):
    """Review 3, L3: Feast JSON-decodes each value of its connection string, so a password `1.50`
    reached Redis as 1.5, `null` as no password at all, and `"quoted"` without its quotes."""
    from urllib.parse import quote

    from feast.infra.online_stores.redis import RedisOnlineStore

    url = f"redis://app:{quote(password, safe='')}@cache.internal:6380/2"
    _, params = RedisOnlineStore._parse_connection_string(redis_connection_string(url))
    assert params["password"] == password and isinstance(params["password"], str)
    assert params["username"] == "app" and params["db"] == 2
