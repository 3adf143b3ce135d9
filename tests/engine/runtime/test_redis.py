"""Embedded Redis through the session stack and a private instance."""

from __future__ import annotations

import pytest
import redis

from engine.runtime.redis_server import EmbeddedRedis

pytestmark = pytest.mark.integration


def test_set_get(redis_client: redis.Redis) -> None:
    redis_client.set("k", "v")
    redis_client.hset("h", mapping={"a": 1, "b": 2})
    assert redis_client.get("k") == b"v"
    assert redis_client.hgetall("h") == {b"a": b"1", b"b": b"2"}


def test_redis_client_is_flushed_per_test(redis_client: redis.Redis) -> None:
    assert redis_client.dbsize() == 0


def test_restart_keeps_url_and_loses_data(tmp_path) -> None:
    with EmbeddedRedis(data_dir=tmp_path) as server:
        url = server.url
        client = redis.Redis.from_url(url, socket_timeout=2)
        client.set("k", "v")
        first_pid = server.pid
        server.stop()
        assert not server.is_running()
        with pytest.raises(redis.ConnectionError):
            client.ping()  # the outage is visible to clients
        server.start()
        assert server.url == url and server.pid != first_pid
        assert client.ping()  # redis-py reconnects to the same URL
        assert client.get("k") is None  # no persistence
        assert not any(tmp_path.glob("*.rdb"))
        client.close()
    assert not server.is_running()
