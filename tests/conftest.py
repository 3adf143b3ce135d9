"""Shared pytest fixtures: one embedded Kafka + Redis stack for the whole session.

Set ``RTML_KAFKA_BOOTSTRAP`` and/or ``RTML_REDIS_URL`` to run the integration tests
against existing services instead (they must be disposable: ``redis_client`` flushes
its database before every test). Only loopback services are started.
"""

from __future__ import annotations

import os
import uuid
from typing import Callable, Iterator, Mapping

import pytest
import redis

from engine.config import RtmlConfig, load_config
from engine.runtime.stack import LocalStack
from engine.runtime.topics import ensure_topics

UniqueTopic = Callable[..., str]

# Tests that use these fixtures need the broker/Redis; they get the marker automatically.
_INTEGRATION_FIXTURES = frozenset({"stack", "kafka_bootstrap", "redis_url", "redis_client", "unique_topic"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that (transitively) uses the stack fixtures as ``integration``."""
    for item in items:
        if _INTEGRATION_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


def _test_config() -> RtmlConfig:
    # Read only the two addresses from the environment: other RTML_* variables on a
    # developer machine should not change what the tests run against.
    env = {k: os.environ[k] for k in ("RTML_KAFKA_BOOTSTRAP", "RTML_REDIS_URL") if os.environ.get(k)}
    return load_config(path=None, env=env)


@pytest.fixture(scope="session")
def stack() -> Iterator[LocalStack]:
    """A started :class:`LocalStack` (embedded unless RTML_KAFKA_BOOTSTRAP/RTML_REDIS_URL)."""
    local = LocalStack(_test_config())
    local.start()
    try:
        local.ensure_topics()
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(stack: LocalStack) -> str:
    """``bootstrap.servers`` of the session broker."""
    return stack.bootstrap


@pytest.fixture(scope="session")
def redis_url(stack: LocalStack) -> str:
    """URL of the session Redis."""
    return stack.redis_url


@pytest.fixture()
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client on the session Redis; the database is flushed before each test."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture()
def unique_topic(kafka_bootstrap: str, request: pytest.FixtureRequest) -> UniqueTopic:
    """Factory: ``unique_topic("events", partitions=3, config=None) -> name``.

    Each call creates a fresh topic named ``<name>-<test>-<random>`` so tests sharing
    the session broker never see each other's records.
    """
    test_part = "".join(ch if ch.isalnum() else "-" for ch in request.node.name)[:40].strip("-")

    def make(name: str = "t", partitions: int = 1, config: Mapping[str, str] | None = None) -> str:
        topic = f"{name}-{test_part}-{uuid.uuid4().hex[:8]}"
        ensure_topics(kafka_bootstrap, [topic], partitions=partitions, config=config)
        return topic

    return make
