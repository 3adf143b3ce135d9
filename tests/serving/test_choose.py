"""rtml.v1.Bandits/Choose over real gRPC, real Redis and Kafka: decisions, errors, the decision log."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import orjson
import pytest
import redis
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from engine.bandits.policies import LinUCB
from engine.bandits.rewards import BanditRewarder
from engine.bandits.spec import BanditSpecError, load_bandit_specs, parse_bandit_specs
from engine.learning.records import JoinedExample, parse_prediction
from engine.runtime.ports import free_port
from proto.rtml.v1 import serving_pb2 as rtml_pb
from proto.rtml.v1 import serving_pb2_grpc as rtml_grpc
from serving.bandits import BanditService
from serving.manager import ModelManager
from serving.onnx_session import CPU
from serving.server import BackgroundServer, ServerOptions, _parser, _with_config_defaults
from tests.serving.test_predict import consume

SPECS = """
bandits:
  - {name: banner, policy: thompson, arms: [hero, sale, new, old, misc], refresh_s: 0}
  - {name: slot, policy: linucb, arms: [a, b, c], context_dim: 3, refresh_s: 0}
"""


@pytest.fixture()
def specs_file(tmp_path: Path) -> Path:
    path = tmp_path / "bandits.yaml"
    path.write_text(SPECS)
    return path


def _server(repo: Path, specs_file: Path | None, redis_url: str | None, **kwargs) -> BackgroundServer:
    options = ServerOptions(grpc_port=0, metrics_port=None, grace_s=1.0, redis_url=redis_url,
                            bandits=str(specs_file) if specs_file else None, **kwargs)
    return BackgroundServer(lambda: ModelManager(repo, poll_interval_s=0, providers=[CPU]), options)


@pytest.fixture()
def stub(repo: Path, specs_file: Path, redis_client: redis.Redis, redis_url: str) -> Iterator[rtml_grpc.BanditsStub]:
    with _server(repo, specs_file, redis_url) as server, grpc.insecure_channel(server.grpc_address) as channel:
        yield rtml_grpc.BanditsStub(channel)


def choose(stub: rtml_grpc.BanditsStub, **fields) -> rtml_pb.ChooseResponse:
    return stub.Choose(rtml_pb.ChooseRequest(**fields), timeout=10)


def status_of(stub: rtml_grpc.BanditsStub, **fields) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as exc:
        choose(stub, **fields)
    return exc.value.code(), exc.value.details()


def test_choose_distinct_arms_exclusion_and_request_ids(stub: rtml_grpc.BanditsStub) -> None:
    one = choose(stub, bandit="banner", request_id="req-1")
    assert one.request_id == "req-1" and one.bandit == "banner" and one.policy == "thompson"
    assert len(one.arms) == 1 and one.arms[0] in {"hero", "sale", "new", "old", "misc"}
    assert one.state_version == 0
    for _ in range(20):
        many = choose(stub, bandit="banner", n=3, exclude=["hero", "sale"])
        assert sorted(many.arms) == ["misc", "new", "old"]  # 3 of the 3 left, each once
        assert len(many.request_id) == 32  # made up by the server
    every = choose(stub, bandit="banner", n=5)
    assert sorted(every.arms) == ["hero", "misc", "new", "old", "sale"]


def test_errors_have_the_right_status(stub: rtml_grpc.BanditsStub) -> None:
    code, details = status_of(stub, bandit="nope")
    assert code == grpc.StatusCode.NOT_FOUND and details == "unknown bandit 'nope'; this server has: ['banner', 'slot']"
    code, details = status_of(stub, bandit="slot", context=[1.0, 2.0])
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == "bandit 'slot' needs a context of 3 values, got 2"
    code, details = status_of(stub, bandit="slot")
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "needs a context of 3 values, got 0" in details
    code, details = status_of(stub, bandit="slot", context=[1.0, float("nan"), float("inf")])
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == "bandit 'slot': context values must be finite; not at positions [1, 2]"
    code, details = status_of(stub, bandit="banner", context=[1.0])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "uses thompson, which takes no context" in details
    code, details = status_of(stub, bandit="banner", n=6)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == "bandit 'banner': cannot choose 6 distinct arms: the bandit has 5 arms"
    code, details = status_of(stub, bandit="banner", n=4, exclude=["hero", "sale"])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "3 after excluding 2" in details
    code, details = status_of(stub, bandit="banner", exclude=["zzz"])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "unknown arm 'zzz'" in details


def test_redis_down_is_unavailable(repo: Path, specs_file: Path) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    with _server(repo, specs_file, dead) as server, grpc.insecure_channel(server.grpc_address) as channel:
        stub = rtml_grpc.BanditsStub(channel)
        code, details = status_of(stub, bandit="banner")
        assert code == grpc.StatusCode.UNAVAILABLE and "bandit 'banner': state store unavailable" in details
        assert status_of(stub, bandit="nope")[0] == grpc.StatusCode.NOT_FOUND  # checked before Redis
    with _server(repo, None, None) as server, grpc.insecure_channel(server.grpc_address) as channel:
        code, details = status_of(rtml_grpc.BanditsStub(channel), bandit="banner")
        assert code == grpc.StatusCode.NOT_FOUND
        assert details == "unknown bandit 'banner'; this server has no bandits (rtml serve --bandits FILE)"


def test_decisions_are_logged_as_prediction_records(
    repo: Path, specs_file: Path, redis_client: redis.Redis, redis_url: str, kafka_bootstrap: str, unique_topic
) -> None:
    topic = unique_topic("predictions")
    with _server(repo, specs_file, redis_url, kafka_bootstrap=kafka_bootstrap, predictions_topic=topic) as server:
        with grpc.insecure_channel(server.grpc_address) as channel:
            stub = rtml_grpc.BanditsStub(channel)
            banner = choose(stub, bandit="banner", request_id="d-1", n=2, entity_ids={"user_id": "u7", "page": "home"})
            slot = choose(stub, bandit="slot", request_id="d-2", context=[0.5, -1.0, 2.0])
    records = consume(kafka_bootstrap, topic, 3)
    assert len(records) == 3
    by_arm = {}
    for key, raw in records:
        record = parse_prediction(orjson.dumps(raw))  # the learning side's parser
        by_arm[(record.request_id, record.arm)] = (key, record)
    first, second = (by_arm[("d-1", arm)] for arm in banner.arms)  # one record per chosen arm
    for key, record in (first, second):
        assert key == b"u7" and record.model == "banner" and record.variant == "bandit"
        assert record.version == "0" and record.score is None and record.features == {}
        assert record.entity_ids == {"user_id": "u7", "page": "home"} and record.context is None
        assert record.event_time_ms > 0
    key, record = by_arm[("d-2", slot.arms[0])]
    assert key == b"d-2"  # no entity ids: keyed by the request id
    assert record.model == "slot" and record.context == [0.5, -1.0, 2.0]


def test_linucb_choose_follows_rewarded_state(stub: rtml_grpc.BanditsStub, redis_client: redis.Redis) -> None:
    """Rewards applied by BanditRewarder show in the next Choose (refresh_s 0): decisions and version."""
    specs = parse_bandit_specs(SPECS)
    rewarder = BanditRewarder(redis_client, specs)
    local = LinUCB(["a", "b", "c"], n_features=3)
    rng = np.random.default_rng(4)
    theta = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    for step in range(1, 61):
        x = rng.normal(size=3).tolist()
        response = choose(stub, bandit="slot", context=x)
        assert response.arms == [local.choose(x)] and response.state_version == step - 1
        arm = response.arms[0]
        reward = float(np.dot(theta["abc".index(arm)], x))
        local.update(arm, reward, x)
        prediction = parse_prediction(orjson.dumps({
            "request_id": response.request_id, "model": "slot", "version": str(response.state_version),
            "variant": "bandit", "event_time_ms": 1, "arm": arm, "context": x,
        }))
        assert rewarder.apply([JoinedExample(prediction, reward, "label", 2)]) == {"slot": 1}


def test_reflection_lists_the_bandits_service(repo: Path, specs_file: Path, redis_client: redis.Redis,
                                               redis_url: str) -> None:
    with _server(repo, specs_file, redis_url) as server, grpc.insecure_channel(server.grpc_address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                    reflection_pb2.ServerReflectionRequest(file_containing_symbol="rtml.v1.Bandits")]
        listed, described = list(stub.ServerReflectionInfo(iter(requests), timeout=10))
    assert "rtml.v1.Bandits" in {s.name for s in listed.list_services_response.service}
    assert described.WhichOneof("message_response") == "file_descriptor_response"


def test_concurrent_choices_share_one_reload(redis_client: redis.Redis, redis_url: str) -> None:
    """A stale snapshot is reloaded once, in a thread, for all the requests waiting on it."""
    specs = parse_bandit_specs(SPECS)
    service = BanditService(specs, redis_url, seed=1)
    reload_threads: list[str] = []
    original = service._reload

    def counting(entry):
        reload_threads.append(threading.current_thread().name)
        return original(entry)

    service._reload = counting  # type: ignore[method-assign]

    async def burst() -> list:
        return await asyncio.gather(*(service.choose("banner", n=2) for _ in range(50)))

    try:
        decisions = asyncio.run(burst())
    finally:
        service.close()
    assert len(decisions) == 50 and all(len(set(d.arms)) == 2 for d in decisions)
    assert len(reload_threads) == 1 and reload_threads[0] != threading.main_thread().name


def test_misconfigured_bandit_fails_the_start(repo: Path, specs_file: Path, redis_client: redis.Redis,
                                              redis_url: str) -> None:
    # Redis holds "banner" with other arms: serving it would mix two bandits' statistics.
    parse_bandit_specs("bandits: [{name: banner, policy: thompson, arms: [x, y]}]")[0].redis_bandit(redis_client)
    with pytest.raises(Exception, match="bandit 'banner': .* holds a different bandit"):
        _server(repo, specs_file, redis_url).start()


def test_cli_flag_and_config_default(specs_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _parser().parse_args(["--models", "m", "--bandits", str(specs_file)]).bandits == str(specs_file)
    assert _parser().parse_args(["--models", "m"]).bandits is None
    monkeypatch.setenv("RTML_LEARNING_BANDITS", str(specs_file))
    assert _with_config_defaults(_parser().parse_args(["--models", "m"])).bandits == str(specs_file)
    bad = tmp_path / "bad.yaml"
    bad.write_text("bandits: [{name: b, policy: linucb, arms: [a]}]")
    with pytest.raises(BanditSpecError, match="needs context_dim"):
        _with_config_defaults(_parser().parse_args(["--models", "m", "--bandits", str(bad)]))
    assert load_bandit_specs(specs_file)[1].context_dim == 3
