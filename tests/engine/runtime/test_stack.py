"""LocalStack adopts external services and starts only what is missing."""

from __future__ import annotations

import psutil
import pytest
import redis

from engine.config import load_config
from engine.runtime.stack import LocalStack

pytestmark = pytest.mark.integration


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def test_external_addresses_start_nothing(stack: LocalStack) -> None:
    cfg = load_config(
        env={},
        overrides={
            "kafka": {"bootstrap": stack.bootstrap, "partitions": stack.config.kafka.partitions},
            "redis": {"url": stack.redis_url},
        },
    )
    before = _children()
    with LocalStack(cfg) as external:
        assert external.kafka is None and external.redis is None
        assert _children() == before
        assert external.bootstrap == stack.bootstrap
        assert external.redis_url == stack.redis_url
        assert external.ensure_topics() == stack.topics  # idempotent on the shared broker
        assert redis.Redis.from_url(external.redis_url).ping()
    # Stopping it must not stop the services it did not start.
    assert _children() == before
    assert redis.Redis.from_url(stack.redis_url).ping()


def test_config_copy_is_filled_and_input_untouched(stack: LocalStack) -> None:
    cfg = load_config(env={}, overrides={"redis": {"url": stack.redis_url}})
    with LocalStack(cfg) as partial:
        assert partial.kafka is not None and partial.redis is None
        assert partial.config.kafka.bootstrap == partial.kafka.bootstrap
        assert partial.config.redis.url == stack.redis_url
        assert cfg.kafka.bootstrap is None  # the caller's config is not mutated
        pid = partial.kafka.pid
        assert pid in _children()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
