"""Routing edits: what each action writes, what it refuses, the history, rollbacks, the CLI, and a
running server that follows the edited config.yaml on its next scan (no restart)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import orjson
import pytest
import yaml

from engine.rollouts import routing as actions
from engine.rollouts.routing import RolloutError
from engine.rollouts.history import HISTORY_FILENAME, read_history
from proto.rtml.v1 import serving_pb2_grpc as rtml_grpc
from serving.api import make_request
from serving.config import Routing
from serving.manager import ModelManager
from serving.onnx_session import CPU
from serving.routing import Router
from serving.server import BackgroundServer, ServerOptions
from tests.engine.rollouts.helpers import run_cli, write_versions


def _fake_versions(root: Path, model: str, versions: tuple[int, ...], config_text: str | None = None) -> Path:
    """Version directories with a (fake) model.onnx: routing edits only scan, never load."""
    for v in versions:
        (root / model / str(v)).mkdir(parents=True, exist_ok=True)
        (root / model / str(v) / "model.onnx").write_bytes(b"not loaded here")
    if config_text is not None:
        (root / model / "config.yaml").write_text(config_text)
    return root / model


def _config(root: Path, model: str = "ranker") -> dict:
    return yaml.safe_load((root / model / "config.yaml").read_text()) or {}


def test_shadow_pins_the_serving_primary_and_keeps_other_settings(tmp_path: Path) -> None:
    _fake_versions(tmp_path, "ranker", (1, 2, 3), "# my comment\nmax_batch_size: 32\ncache_ttl_ms: 250\n"
                   "features:\n  inputs:\n    features: [user.clicks_1h]\n")
    before = (tmp_path / "ranker" / "config.yaml").stat().st_ino
    out = actions.start_shadow(tmp_path, "ranker", "3", reason="retrained", actor="tester")
    assert out.changed and "version 3 now shadows" in out.summary and "pinned to version 2" in out.summary
    cfg = _config(tmp_path)
    # Version 3 is the highest, but it must not become the default: the primary is pinned to the
    # version serving before it (2, the highest that is not the shadow).
    assert cfg["routing"] == {"primary": "2", "shadow": {"version": "3"}}
    assert cfg["max_batch_size"] == 32 and cfg["cache_ttl_ms"] == 250
    assert cfg["features"]["inputs"] == {"features": ["user.clicks_1h"]}
    assert (tmp_path / "ranker" / "config.yaml").stat().st_ino != before  # replaced by rename, not rewritten
    assert not [p for p in (tmp_path / "ranker").iterdir() if ".tmp-" in p.name]
    [change] = read_history(tmp_path / "ranker" / HISTORY_FILENAME)
    assert (change.seq, change.action, change.version, change.before, change.reason, change.actor) == (
        1, "shadow", "3", None, "retrained", "tester")
    assert change.after == cfg["routing"] and change.time_ms > 0


def test_current_primary_follows_the_routing(tmp_path: Path) -> None:
    assert actions.current_primary(tmp_path, "ranker") is None  # no model yet (a first training run)
    _fake_versions(tmp_path, "ranker", (1, 2, 3))
    assert actions.current_primary(tmp_path, "ranker") == "3"
    actions.start_canary(tmp_path, "ranker", "3", 10)
    assert actions.current_primary(tmp_path, "ranker") == "2"
    actions.promote(tmp_path, "ranker", "3")
    assert actions.current_primary(tmp_path, "ranker") == "3"


def test_refuses_missing_versions_and_invalid_results_without_writing(tmp_path: Path) -> None:
    _fake_versions(tmp_path, "ranker", (1, 2))
    (tmp_path / "ranker" / "7").mkdir()  # a version directory without a model is not a version
    for call, fragment in [
        (lambda: actions.start_shadow(tmp_path, "ranker", "7"), "no version '7'"),
        (lambda: actions.start_canary(tmp_path, "ranker", "9", 10), "no version '9'"),
        (lambda: actions.start_canary(tmp_path, "ranker", "1", 150), "less than or equal to 100"),
        (lambda: actions.promote(tmp_path, "nope", "1"), "no model 'nope'"),
        (lambda: actions.rollback(tmp_path, "ranker"), "no rollout change left"),
        (lambda: actions.rollback(tmp_path, "ranker", "1"), "not in the routing"),
        (lambda: actions.start_ab(tmp_path, "ranker", "2", names=("shadow", "b")), "reserved"),
    ]:
        with pytest.raises(RolloutError, match=fragment):
            call()
    assert not (tmp_path / "ranker" / "config.yaml").exists()
    assert not (tmp_path / "ranker" / HISTORY_FILENAME).exists()


def test_an_invalid_config_is_refused_not_overwritten(tmp_path: Path) -> None:
    _fake_versions(tmp_path, "ranker", (1, 2), "max_batch_size: 128\nqueue_capacity: 8\n")
    with pytest.raises(RolloutError, match="queue_capacity"):
        actions.start_canary(tmp_path, "ranker", "2", 5)
    assert _config(tmp_path) == {"max_batch_size": 128, "queue_capacity": 8}


def test_canary_ab_promote_and_rollbacks_walk_the_history(tmp_path: Path) -> None:
    _fake_versions(tmp_path, "ranker", (1, 2, 3))
    actions.pin_primary(tmp_path, "ranker", "1")
    out = actions.start_canary(tmp_path, "ranker", "2", 5, key="session_id")
    assert _config(tmp_path)["routing"]["canary"] == {"version": "2", "percent": 5.0, "key": "session_id"}
    out = actions.start_canary(tmp_path, "ranker", "2", 20)  # ramp up: the key stays
    assert "(was 5%)" in out.summary
    assert _config(tmp_path)["routing"]["canary"] == {"version": "2", "percent": 20.0, "key": "session_id"}
    with pytest.raises(RolloutError, match="canary is running"):
        actions.start_ab(tmp_path, "ranker", "3")
    assert not actions.start_canary(tmp_path, "ranker", "2", 20).changed  # nothing to change: not logged

    out = actions.promote(tmp_path, "ranker", "2", reason="canary healthy")
    assert "version 2 is the primary (was 1)" in out.summary and "canary version 2 ended" in out.summary
    assert _config(tmp_path)["routing"] == {"primary": "2"}

    out = actions.start_ab(tmp_path, "ranker", "3", weights=(70, 30), names=("ctl", "new"))
    routing = _config(tmp_path)["routing"]
    assert routing["ab"]["variants"] == {"ctl": {"version": "2", "weight": 70.0}, "new": {"version": "3", "weight": 30.0}}
    assert routing["primary"] == "2"

    # Plain rollbacks undo one change each, newest first.
    actions.rollback(tmp_path, "ranker")
    assert _config(tmp_path)["routing"] == {"primary": "2"}
    actions.rollback(tmp_path, "ranker")
    assert _config(tmp_path)["routing"]["canary"]["version"] == "2"
    assert _config(tmp_path)["routing"]["primary"] == "1"
    history = read_history(tmp_path / "ranker" / HISTORY_FILENAME)
    assert [(c.action, c.undoes) for c in history[-2:]] == [("rollback", 5), ("rollback", 4)]
    assert len(history) == 7 and [c.seq for c in history] == list(range(1, 8))


def test_rollback_of_a_version_restores_the_previous_primary(tmp_path: Path) -> None:
    _fake_versions(tmp_path, "ranker", (1, 2, 3))
    actions.start_shadow(tmp_path, "ranker", "3")  # primary pinned to 2
    actions.promote(tmp_path, "ranker", "3")
    assert _config(tmp_path)["routing"] == {"primary": "3"}
    out = actions.rollback(tmp_path, "ranker", "3", reason="bad")
    assert _config(tmp_path)["routing"] == {"primary": "2"}
    assert "primary is version 2 again" in out.summary

    actions.start_ab(tmp_path, "ranker", "3")
    actions.start_shadow(tmp_path, "ranker", "1")
    out = actions.rollback(tmp_path, "ranker", "3")
    assert "the A/B test (ended)" in out.summary
    assert _config(tmp_path)["routing"] == {"primary": "2", "shadow": {"version": "1"}}


def test_restoring_a_routing_with_a_removed_version_is_refused(tmp_path: Path) -> None:
    _fake_versions(tmp_path, "ranker", (1, 2, 3))
    actions.start_canary(tmp_path, "ranker", "3", 10)
    actions.rollback(tmp_path, "ranker", "3")  # a removal is a change a plain rollback can undo
    assert _config(tmp_path)["routing"] == {"primary": "2"}
    for f in (tmp_path / "ranker" / "3").iterdir():
        f.unlink()
    (tmp_path / "ranker" / "3").rmdir()
    with pytest.raises(RolloutError, match=r"version\(s\) 3 are not in the repository"):
        actions.rollback(tmp_path, "ranker")


def test_cli_edits_status_and_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fake_versions(tmp_path, "ranker", (1, 2))
    repo = ["--repository", str(tmp_path)]
    assert run_cli(["rollout", "canary", "ranker", "2", "--percent", "10", *repo, "--reason", "try it"]) == 0
    assert "canary version 2 takes 10% of entities" in capsys.readouterr().out
    assert run_cli(["rollout", "ab", "ranker", "2", *repo]) == 1
    assert "refused: a canary is running" in capsys.readouterr().err
    assert run_cli(["rollout", "status", "ranker", *repo]) == 0
    out = capsys.readouterr().out
    assert "routing: primary 1; canary 2 at 10% of user_id" in out and "(try it)" in out
    assert run_cli(["rollout", "rollback", "ranker", *repo]) == 0
    assert "routing restored to before change 1" in capsys.readouterr().out
    assert "routing" not in _config(tmp_path)
    assert run_cli(["rollout", "ab", "ranker", "2", "--weights", "90,10", "--names", "a,b", *repo]) == 0
    assert _config(tmp_path)["routing"]["ab"]["variants"]["b"] == {"version": "2", "weight": 10.0}


def test_default_repository_comes_from_the_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = tmp_path / "data" / "models"
    _fake_versions(repo, "ranker", (1, 2))
    config = tmp_path / "rtml.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data")}))
    assert run_cli(["--config", str(config), "rollout", "shadow", "ranker", "2"]) == 0
    assert _config(repo)["routing"]["shadow"] == {"version": "2"}


# -- a running server follows the edits ----------------------------------------------------------


def _predict(stub: rtml_grpc.PredictionStub, user: str) -> tuple[str, str, float]:
    response = stub.Predict(make_request("ranker", [{"entity_ids": {"user_id": user}, "tensors": {"features": [1.0]}}]),
                            timeout=10)
    return response.variant, response.model_version, response.results[0].scores[0]


@pytest.mark.slow
def test_server_routes_by_the_edited_config_without_restart(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write_versions(repo, "ranker", (1,))
    users = [f"user-{i}" for i in range(60)]
    options = ServerOptions(grpc_port=0, metrics_port=None, grace_s=1.0)
    with BackgroundServer(lambda: ModelManager(repo, poll_interval_s=0.2, providers=[CPU]), options) as server, \
            grpc.insecure_channel(server.grpc_address) as channel:
        stub = rtml_grpc.PredictionStub(channel)
        errors: list[BaseException] = []
        answered = [0]
        stop = threading.Event()

        def traffic() -> None:  # requests keep flowing through every change
            while not stop.is_set():
                try:
                    _predict(stub, "steady-user")
                    answered[0] += 1
                except grpc.RpcError as exc:
                    errors.append(exc)

        sender = threading.Thread(target=traffic)
        sender.start()
        try:
            assert run_cli(["rollout", "pin", "ranker", "--repository", str(repo)]) == 0
            write_versions(repo, "ranker", (2,))  # registered while the primary is pinned
            assert run_cli(["rollout", "canary", "ranker", "2", "--percent", "50", "--repository", str(repo)]) == 0
            router = Router("ranker", Routing.model_validate(_config(repo)["routing"]))
            expected = {u: router.choose(u) for u in users}
            assert 10 < sum(r.variant == "canary" for r in expected.values()) < 50

            def routed_like_the_file() -> bool:
                got = {u: _predict(stub, u) for u in users}
                return all(got[u][:2] == (expected[u].variant, expected[u].version or "1") for u in users)

            deadline = time.monotonic() + 30
            while not routed_like_the_file():
                assert time.monotonic() < deadline, "the server never applied the canary from config.yaml"
                time.sleep(0.2)
            for u in users:  # and the answers are the routed version's
                variant, version, score = _predict(stub, u)
                assert score == 1.0 + 1000.0 * int(version)

            assert run_cli(["rollout", "rollback", "ranker", "2", "--repository", str(repo)]) == 0
            deadline = time.monotonic() + 30
            while any(_predict(stub, u)[1] != "1" for u in users):
                assert time.monotonic() < deadline, "the server never applied the rollback"
                time.sleep(0.2)
        finally:
            stop.set()
            sender.join()
    assert errors == [] and answered[0] > 0
    history = [orjson.loads(line) for line in (repo / "ranker" / HISTORY_FILENAME).read_bytes().splitlines()]
    assert [h["action"] for h in history] == ["pin", "canary", "rollback"]
