"""Local runtime: embedded Kafka (Tansu) and Redis, topic admin, and the process supervisor."""

from engine.runtime.kafka import BrokerStartError, EmbeddedKafka, tansu_binary
from engine.runtime.ports import free_port
from engine.runtime.redis_server import EmbeddedRedis, RedisStartError, redis_server_binary
from engine.runtime.stack import LocalStack
from engine.runtime.supervisor import Alert, ChildStatus, ProcessSpec, Supervisor
from engine.runtime.topics import TopicError, ensure_topics, topic_end_offsets, topic_partitions

__all__ = [
    "Alert",
    "BrokerStartError",
    "ChildStatus",
    "EmbeddedKafka",
    "EmbeddedRedis",
    "LocalStack",
    "ProcessSpec",
    "RedisStartError",
    "Supervisor",
    "TopicError",
    "ensure_topics",
    "free_port",
    "redis_server_binary",
    "tansu_binary",
    "topic_end_offsets",
    "topic_partitions",
]
