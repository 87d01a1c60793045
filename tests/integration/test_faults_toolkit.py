"""The fault toolkit itself: a dropped proxy really cuts PostgreSQL and Redis off, and a restarted Redis comes back
empty."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.integration.faults import TcpProxy

pytestmark = pytest.mark.integration


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def test_proxy_drops_open_connections_and_refuses_new_ones_until_restored(pg_proxy: tuple[TcpProxy, str]) -> None:
    proxy, url = pg_proxy
    conn = psycopg.connect(_libpq(url), connect_timeout=5, autocommit=True)
    assert conn.execute("SELECT 41 + 1").fetchone() == (42,)

    proxy.drop()
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(_libpq(url), connect_timeout=3)
    assert proxy.refused >= 1

    proxy.restore()
    with psycopg.connect(_libpq(url), connect_timeout=5, autocommit=True) as again:
        assert again.execute("SELECT 7").fetchone() == (7,)


def test_proxy_keeps_user_and_database_in_the_url() -> None:
    proxy = TcpProxy("127.0.0.1", 5432)
    proxy.port = 40000
    assert proxy.url("postgresql+psycopg://farm:pw@10.1.2.3:5432/db?x=1") == (
        "postgresql+psycopg://farm:pw@127.0.0.1:40000/db?x=1"
    )
    assert proxy.url("redis://127.0.0.1:6379/3") == "redis://127.0.0.1:40000/3"


def test_own_redis_restart_loses_every_message(own_redis: Any) -> None:
    import redis

    client = redis.Redis.from_url(own_redis.url, socket_connect_timeout=3)
    client.rpush("cpu", b"m1", b"m2")
    assert own_redis.queue_length("cpu") == 2
    client.close()
    own_redis.restart()
    assert own_redis.queue_length("cpu") == 0


def test_proxy_in_front_of_redis_cuts_a_client_off_and_keeps_its_port(own_redis: Any) -> None:
    import redis

    with TcpProxy("127.0.0.1", own_redis.port) as proxy:
        port = proxy.port
        client = redis.Redis.from_url(proxy.url(own_redis.url), socket_connect_timeout=2, socket_timeout=2)
        client.rpush("cpu", b"m1")
        proxy.drop()
        with pytest.raises(redis.ConnectionError):
            client.llen("cpu")  # the open connection is reset, and so is the reconnect redis-py tries
        proxy.restore()
        assert proxy.port == port
        assert client.llen("cpu") == 1  # the broker itself kept its list: only the network failed
        client.close()
