"""The local infrastructure an rtml process needs: a Kafka broker and a Redis server.

Anything configured (``cfg.kafka.bootstrap``, ``cfg.redis.url``) is used as is; anything
left as ``None`` is started embedded on a free loopback port.
"""

from __future__ import annotations

import logging
from types import TracebackType

from engine.config import RtmlConfig
from engine.runtime.kafka import EmbeddedKafka
from engine.runtime.redis_server import EmbeddedRedis
from engine.runtime.topics import ensure_topics

log = logging.getLogger(__name__)


class LocalStack:
    """Start (or adopt) Kafka and Redis for one configuration.

    >>> with LocalStack(load_config()) as stack:       # doctest: +SKIP
    ...     stack.ensure_topics()
    ...     run_pipeline(stack.config)

    Only services this object started are stopped by :meth:`stop`.
    """

    def __init__(self, cfg: RtmlConfig) -> None:
        """Remember ``cfg``; nothing starts until :meth:`start`."""
        self._cfg = cfg
        self._config: RtmlConfig | None = None
        # The embedded services, set only for those this stack started (and must stop).
        self.kafka: EmbeddedKafka | None = None
        self.redis: EmbeddedRedis | None = None

    @property
    def config(self) -> RtmlConfig:
        """A copy of the input config with ``kafka.bootstrap`` and ``redis.url`` filled in."""
        if self._config is None:
            raise RuntimeError("LocalStack is not started")
        return self._config

    @property
    def bootstrap(self) -> str:
        """Kafka ``bootstrap.servers`` in use."""
        bootstrap = self.config.kafka.bootstrap
        assert bootstrap is not None
        return bootstrap

    @property
    def redis_url(self) -> str:
        """Redis URL in use."""
        url = self.config.redis.url
        assert url is not None
        return url

    @property
    def topics(self) -> list[str]:
        """The input/output topics of the config followed by their dead-letter topics."""
        k = self._cfg.kafka
        learning = self._cfg.learning
        base = [k.events_topic, k.labels_topic, k.items_topic, k.alerts_topic, learning.predictions_topic]
        suffix = self._cfg.pipeline.dlq_suffix
        return base + [f"{t}{suffix}" for t in base] + [learning.metrics_topic, learning.unjoined_topic]

    def start(self) -> "LocalStack":
        """Start whatever is not configured externally. Idempotent."""
        if self._config is not None:
            return self
        config = self._cfg.model_copy(deep=True)
        try:
            if config.kafka.bootstrap is None:
                self.kafka = EmbeddedKafka().start()
                config.kafka.bootstrap = self.kafka.bootstrap
            else:
                log.info("using external Kafka at %s", config.kafka.bootstrap)
            if config.redis.url is None:
                self.redis = EmbeddedRedis().start()
                config.redis.url = self.redis.url
            else:
                log.info("using external Redis at %s", config.redis.url)
        except BaseException:
            # Do not leak a broker when Redis fails to come up (or vice versa).
            self._stop_owned()
            raise
        self._config = config
        return self

    def ensure_topics(self, timeout: float = 30) -> list[str]:
        """Create the config's topics and dead-letter topics (idempotent); return their names."""
        names = self.topics
        ensure_topics(
            self.bootstrap, names, partitions=self._cfg.kafka.partitions, timeout=timeout
        )
        return names

    def stop(self) -> None:
        """Stop only the services this stack started. Idempotent."""
        self._stop_owned()
        self._config = None

    def _stop_owned(self) -> None:
        if self.redis is not None:
            self.redis.close()
            self.redis = None
        if self.kafka is not None:
            self.kafka.stop()
            self.kafka = None

    def __enter__(self) -> "LocalStack":
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        if self._config is None:
            return "LocalStack(not started)"
        return (
            f"LocalStack(kafka={self.bootstrap}{' embedded' if self.kafka else ''}, "
            f"redis={self.redis_url}{' embedded' if self.redis else ''})"
        )
