"""``rtml demo``: the main job end to end, in about three minutes on a 2-core machine.

1. **Stack**: embedded Kafka and Redis (or the configured ones), the features, learning and
   drift dataflows under the supervisor.
2. **History**: the simulator's last ``history_s`` seconds of traffic (users and items with
   hidden preferences) go through Kafka and the features dataflow into Redis and the offline
   log.
3. **Starting models** (:mod:`engine.demo.models`): a point-in-time data set from that log;
   a DeepFM ranker, a two-tower retrieval model and two ``ctr`` models (LR vs DeepFM, in an
   A/B test) trained, exported and registered; the item tower's vectors published on the
   items topic.
4. **Serving**: ``rtml serve`` with Predict and Recommend (FAISS index following the items
   topic, exploration slots for cold items).
5. **Live traffic** for ``live_s`` seconds: the simulator keeps producing (new items arrive
   and are embedded by the item tower on their way to the index; a taste drift is injected at
   ``drift_at_s``), and a simulated app calls Recommend and Predict; users click on what they
   are shown with their true (hidden) probabilities, so online learning, bandit rewards, drift
   detection and the A/B test all see real feedback.
6. **Load**: the load harness drives Recommend and Predict for throughput and p50 / p99.
7. **Report** (:mod:`engine.demo.report`): markdown and PNG plots; the path is printed.
"""

from __future__ import annotations

import asyncio
import random
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import grpc
import numpy as np
import orjson
import redis
from prometheus_client.parser import text_string_to_metric_families
from tqdm import tqdm

from engine.config import RtmlConfig
from engine.demo.models import CTR, RANKER, TOWERS, StartingModels, item_vectors, train_starting_models
from engine.demo.report import AlertMark, DemoResults, RpcStats, Table, write_report
from engine.events.codec import encode
from engine.events.feedback import FeedbackSimulator
from engine.events.schemas import Interaction, ItemUpdate, Label
from engine.events.simulator import Simulator, SimulatorConfig
from engine.runtime.jobs import job_specs
from engine.runtime.ports import free_port, free_port_range
from engine.runtime.progress import histogram_buckets, pipeline_progress, scrape, scrape_job
from engine.runtime.stack import LocalStack
from engine.runtime.supervisor import ProcessSpec, Supervisor
from proto.rtml.v1 import serving_pb2 as rtml_pb

RECOMMEND_METHOD = "/rtml.v1.Recommendations/Recommend"
PREDICT_METHOD = "/rtml.v1.Prediction/Predict"
EXPLORE_BANDIT = "rec-explore"
EXPLORE_MAX_AGE_MS = 300_000  # items younger than this are cold: explored, and counted for regret


# The live phase's freshness is also reported from this many seconds in: before, the learning
# and drift dataflows and the server start on the same cores and delay writes by seconds.
STEADY_AFTER_S = 10.0


@dataclass(frozen=True)
class DemoPlan:
    """How big and how long the demo is (the defaults take about three minutes here)."""

    history_s: float = 900.0  # event time of simulated history the starting models learn from
    history_rate: float = 40.0  # organic impressions per second, in the history and while live
    live_s: float = 80.0
    drift_at_s: float = 35.0  # seconds into the live phase
    app_rps: float = 12.0  # Recommend calls per second of the simulated app (and as many Predict calls)
    n_users: int = 300
    n_items: int = 120
    new_item_every_s: float = 8.0
    k: int = 10
    candidates: int = 100
    load_s: float = 5.0
    load_concurrency: int = 16
    seed: int = 7


@dataclass
class _Live:
    """What the live phase records."""

    started: float
    recommends: int = 0
    predicts: int = 0
    clicks: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    explore_regret: float = 0.0
    regret: list[tuple[float, float]] = field(default_factory=list)
    auc: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


# -- set-up -------------------------------------------------------------------------------------


def _configure(cfg: RtmlConfig, run_dir: Path) -> RtmlConfig:
    cfg = cfg.model_copy(deep=True)
    cfg.data_dir = str(run_dir)
    cfg.pipeline.offline_dir = str(run_dir / "offline")
    cfg.pipeline.recovery = False  # the embedded broker forgets everything on exit anyway
    cfg.pipeline.allowed_lateness_ms = 5_000  # windows close within the tour
    cfg.learning.model_repository = str(run_dir / "models")
    cfg.learning.recovery = False
    cfg.learning.label_window_ms = 10_000  # simulated clicks come within seconds
    cfg.learning.report_every_examples = 200
    cfg.learning.auc_window = 2_000
    cfg.drift.window_ms = 15_000
    cfg.drift.min_samples = 200
    cfg.drift.detector_grace = 1_000  # the online learner starts from scratch with the live traffic
    bandits = run_dir / "bandits.yaml"
    bandits.write_text(f"bandits:\n  - {{name: {EXPLORE_BANDIT}, policy: thompson, dynamic_arms: true}}\n")
    cfg.learning.bandits = str(bandits)
    for name in ("port", "learning_port", "drift_port"):  # process i serves on port + i
        setattr(cfg.metrics, name, free_port_range(max(1, cfg.pipeline.processes)))
    cfg.metrics.supervisor_port = free_port()
    return cfg


def _recommend_config(run_dir: Path, dim: int, plan: DemoPlan) -> Path:
    path = run_dir / "recommend.yaml"
    path.write_text(f"""\
user_tower: {TOWERS}_user
ranker: {RANKER}
retrieval:
  candidates: {plan.candidates}
  index: {{dim: {dim}, metric: ip, kind: flat}}
rerank:
  mmr_lambda: 0.8
  freshness: {{half_life: 10m, boost: 0.1}}
exploration:
  slots: 2
  bandit: {EXPLORE_BANDIT}
  max_age: {EXPLORE_MAX_AGE_MS}
popular:
  source: item.clicks_1h
  refresh: 10s
""")
    return path


def _serve_spec(cfg: RtmlConfig, recommend: Path, grpc_port: int, metrics_port: int) -> ProcessSpec:
    argv = [sys.executable, "-m", "engine.cli", "serve", "--models", str(cfg.learning.model_repository),
            "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port), "--redis-url", str(cfg.redis.url),
            "--kafka-bootstrap", str(cfg.kafka.bootstrap), "--recommend", str(recommend), "--poll-interval", "1"]
    return ProcessSpec("serve", argv)


# -- producing ------------------------------------------------------------------------------------


class _Sender:
    """Events to their topics (JSON), item updates through the item tower first."""

    def __init__(self, cfg: RtmlConfig) -> None:
        from confluent_kafka import Producer

        self.cfg = cfg
        self.producer = Producer({"bootstrap.servers": cfg.kafka.bootstrap, "linger.ms": 5,
                                  "queue.buffering.max.messages": 500_000})
        self.embed: Any = None  # set once the item tower exists: ItemUpdate -> ItemUpdate
        self.sent = 0

    def send(self, event: Any) -> None:
        k = self.cfg.kafka
        if isinstance(event, Interaction):
            topic, key = k.events_topic, event.user_id
        elif isinstance(event, Label):
            topic, key = k.labels_topic, event.request_id
        elif isinstance(event, ItemUpdate):
            if self.embed is None:
                return  # history: the catalogue is embedded in one go after training
            event, topic, key = self.embed(event), k.items_topic, event.item_id
        else:
            return  # malformed events are the features tour's subject, not this one's
        self.produce(topic, event, key)

    def produce(self, topic: str, event: Any, key: str) -> None:
        """One event to ``topic`` as it is (no routing, no embedding)."""
        value, headers = encode(event)
        while True:
            try:
                self.producer.produce(topic, value, key, headers=headers)
                break
            except BufferError:
                self.producer.poll(0.05)
        self.sent += 1
        if self.sent % 1000 == 0:
            self.producer.poll(0)

    def flush(self) -> None:
        self.producer.flush(30)


def _history(sim: Simulator, events: Iterator[Any], sender: _Sender, until_ms: int) -> tuple[list[Interaction], Any]:
    """Send the simulated past; returns its interactions and the first live event."""
    interactions: list[Interaction] = []
    for event in events:
        if event.event_time >= until_ms:
            sender.flush()
            return interactions, event
        sender.send(event)
        if isinstance(event, Interaction):
            interactions.append(event)
    raise RuntimeError("the simulator stopped")  # pragma: no cover - the stream is endless


def _wait_caught_up(cfg: RtmlConfig, timeout_s: float) -> None:
    progress = pipeline_progress(cfg)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        consumed, available = progress()
        if available and consumed >= available:
            return
        time.sleep(0.5)


# -- live ------------------------------------------------------------------------------------


def _freshness_buckets(cfg: RtmlConfig) -> dict[float, float]:
    """Cumulative counts of the features job's freshness histogram by upper bound, all processes."""
    ports = [cfg.metrics.port + i for i in range(cfg.pipeline.processes)]
    return histogram_buckets(ports, "rtml_feature_freshness_seconds")


def _freshness_ms(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """The ``q`` quantile of freshness over what was written between two scrapes, in ms."""
    from engine.rollouts.scrape import histogram_quantile as quantile

    buckets = sorted((le, after[le] - before.get(le, 0.0)) for le in after)
    value = quantile(q, buckets)
    return None if value != value else value * 1000


def _learner_auc(port: int, processes: int = 1) -> dict[str, float]:
    """Rolling exact AUC per learner from the learning job's /metrics (one port per process)."""
    out: dict[str, float] = {}
    for i in range(processes):
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port + i}/metrics", timeout=2).read().decode()
        except OSError:
            continue
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "rtml_learner_metric" and s.labels.get("metric") == "auc" \
                        and s.labels.get("scope") == "rolling" and s.value == s.value:  # NaN until both classes
                    out[s.labels["learner"]] = s.value
    return out


class _App:
    """The simulated app: calls Recommend and Predict, shows results, sends the users' clicks."""

    def __init__(self, cfg: RtmlConfig, target: str, sim: Simulator, sender: _Sender, users: list[str],
                 live: _Live, plan: DemoPlan) -> None:
        self.cfg, self.sim, self.sender, self.users, self.live, self.plan = cfg, sim, sender, users, live, plan
        self.feedback = FeedbackSimulator(sim, seed=plan.seed)
        self.rng = random.Random(plan.seed)
        self.target = target
        self.recommend: Any = None  # the stubs need the event loop: made in run()
        self.predict: Any = None

    def _error(self, exc: grpc.aio.AioRpcError) -> None:
        name = exc.code().name
        self.live.errors[name] = self.live.errors.get(name, 0) + 1

    def _clicks(self, user: str, shown: list[str], request_id: str, now_ms: int, impressions: bool) -> None:
        for event in self.feedback.respond(user, shown, request_id, now_ms):
            if event.event_type == "click" or impressions:
                self.sender.send(event)
                self.live.clicks += event.event_type == "click"

    async def one_recommend(self) -> None:
        user, request_id, now_ms = self.rng.choice(self.users), uuid.uuid4().hex, int(time.time() * 1000)
        try:
            response = await self.recommend(rtml_pb.RecommendRequest(user_id=user, k=self.plan.k,
                                                                     request_id=request_id), timeout=5)
        except grpc.aio.AioRpcError as exc:
            return self._error(exc)
        shown = [item.item_id for item in response.items]
        self.live.recommends += 1
        self._clicks(user, shown, request_id, now_ms, impressions=False)  # serving logged the impressions
        # Exploration regret: the best cold item (true CTR at that slot) minus the one explored.
        cold_now = _cold_items(self.sim, now_ms, EXPLORE_MAX_AGE_MS)
        for item in response.items:
            if item.reason.startswith("explore") and item.item_id in cold_now:
                best = max(self.feedback.true_ctr(user, c, item.position, now_ms) for c in cold_now)
                self.live.explore_regret += best - self.feedback.true_ctr(user, item.item_id, item.position, now_ms)
        self.live.regret.append((time.monotonic() - self.live.started, self.live.explore_regret))

    async def one_predict(self) -> None:
        user, request_id, now_ms = self.rng.choice(self.users), uuid.uuid4().hex, int(time.time() * 1000)
        items = self.rng.sample(range(self.sim.n_items_at(now_ms)), 5)
        instances = [rtml_pb.Instance(entity_ids={"user_id": user, "item_id": self.sim.item_id(i)}) for i in items]
        try:
            response = await self.predict(rtml_pb.PredictRequest(model=CTR, instances=instances,
                                                                 request_id=request_id), timeout=5)
        except grpc.aio.AioRpcError as exc:
            return self._error(exc)
        self.live.predicts += 1
        order = np.argsort([-r.scores[0] for r in response.results])[:2]  # the app shows the best two
        self._clicks(user, [self.sim.item_id(items[i]) for i in order], request_id, now_ms, impressions=True)

    async def run(self, duration_s: float, on_tick: Any) -> None:
        channel = grpc.aio.insecure_channel(self.target)
        self.recommend = channel.unary_unary(RECOMMEND_METHOD, rtml_pb.RecommendRequest.SerializeToString,
                                             rtml_pb.RecommendResponse.FromString)
        self.predict = channel.unary_unary(PREDICT_METHOD, rtml_pb.PredictRequest.SerializeToString,
                                           rtml_pb.PredictResponse.FromString)
        period = 1.0 / self.plan.app_rps
        end = time.monotonic() + duration_s
        next_tick = time.monotonic()
        tasks: set[asyncio.Task[None]] = set()
        while time.monotonic() < end:
            for coro in (self.one_recommend(), self.one_predict()):
                task = asyncio.ensure_future(coro)
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if time.monotonic() >= next_tick:
                on_tick()
                next_tick += 1.0
            await asyncio.sleep(period)
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        await channel.close()


def _cold_items(sim: Simulator, now_ms: int, max_age_ms: int) -> list[str]:
    """Items that joined the catalogue within ``max_age_ms`` (what exploration calls cold)."""
    return [sim.item_id(i) for i in range(sim.n_items_at(now_ms))
            if now_ms - max_age_ms <= _arrival_ms(sim, i) <= now_ms and i >= sim.config.n_items]


def _organic(events: Iterator[Any], first: Any, sender: _Sender, stop: threading.Event,
             arrived: dict[str, float]) -> None:
    """Keep the simulator's own traffic flowing in real time (event time = wall clock)."""
    event = first
    while not stop.is_set():
        ahead = event.event_time / 1000 - time.time()
        if ahead > 0:
            stop.wait(min(ahead, 0.5))
            if ahead > 0.5:
                continue
        if isinstance(event, ItemUpdate) and event.active:
            arrived.setdefault(event.item_id, time.time())
        sender.send(event)
        event = next(events)
    sender.flush()


# -- the run ------------------------------------------------------------------------------------


def run_main_demo(cfg: RtmlConfig, plan: DemoPlan = DemoPlan(), out_dir: str | Path | None = None) -> int:
    """Run the demo; returns 0 when every step worked (the report says what happened)."""
    run_dir = Path(out_dir or Path(cfg.data_dir) / f"demo-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = _configure(cfg, run_dir)
    t0 = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - t0:5.1f}s] {text}", flush=True)

    with LocalStack(cfg) as stack:
        stack.ensure_topics()
        cfg = stack.config
        say(f"stack up: kafka {cfg.kafka.bootstrap}, redis {cfg.redis.url}; everything goes to {run_dir}")
        features = Supervisor(job_specs(cfg, "features"), cfg, log_dir=run_dir / "logs",
                              progress=pipeline_progress(cfg)).start()
        # Learning and drift start with the live traffic: the drift reference (the first full
        # window) is then live traffic, not the replayed history.
        online: Supervisor | None = None
        serving: Supervisor | None = None
        try:
            now_ms = int(time.time() * 1000)
            sim = Simulator(SimulatorConfig(
                n_users=plan.n_users, n_items=plan.n_items, rate=plan.history_rate, seed=plan.seed,
                start_time_ms=now_ms - int(plan.history_s * 1000), drift_at_s=plan.history_s + plan.drift_at_s,
                new_item_every_s=plan.new_item_every_s,
            ))
            sender = _Sender(cfg)
            events = sim.events()
            say(f"history: {plan.history_s / 60:.0f} min of simulated traffic ({plan.n_users} users, "
                f"{plan.n_items} items) through Kafka and the features dataflow")
            history, first_live = _history(sim, events, sender, now_ms)
            _wait_caught_up(cfg, 120)
            time.sleep(2.0)  # the last windows close and reach the offline log
            say(f"history: {len(history):,} interactions in; training the starting models")

            from engine.datasets.examples import events_frame, examples_from_events

            examples = examples_from_events(events_frame(history), cfg.learning.label_window_ms)
            models = train_starting_models(cfg, examples, run_dir, plan.candidates)
            say("trained and registered: " + ", ".join(f"{k} test AUC {v:.3f}" for k, v in models.test_auc.items()))

            dim = int(models.two_tower.params.get("out_dim", 16))
            embedder = _ItemEmbedder(cfg, models)
            _publish_catalogue(cfg, sim, sender, embedder, now_ms)
            sender.embed = embedder
            grpc_port, metrics_port = free_port(), free_port()
            serving = Supervisor([_serve_spec(cfg, _recommend_config(run_dir, dim, plan), grpc_port, metrics_port)],
                                 cfg, log_dir=run_dir / "logs").start()
            target = f"127.0.0.1:{grpc_port}"
            online = Supervisor([s for job in ("learning", "drift") for s in job_specs(cfg, job)], cfg,
                                log_dir=run_dir / "logs").start()
            asyncio.run(_wait_recommend(target, plan, 90))
            say(f"serving on {target}: Predict (ctr A/B: v1 LR vs v2 DeepFM) and Recommend "
                f"(two-tower → FAISS → ranker → re-rank → exploration)")

            results, live_started = _live_phase(cfg, plan, sim, events, first_live, sender, models, target, say)
            results.rpcs = _load_phase(target, sim, plan, say)
            _collect(cfg, results, live_started)
            path = write_report(results, run_dir / "report")
            say(f"report: {path}")
            print(path.read_text(), flush=True)
            return 0
        finally:
            for supervisor in (serving, online):
                if supervisor is not None:
                    supervisor.stop()
            features.stop()


def _publish_catalogue(cfg: RtmlConfig, sim: Simulator, sender: _Sender, embedder: "_ItemEmbedder",
                       now_ms: int) -> None:
    """Every item that exists now, embedded by the item tower from its current features."""
    ids = [sim.item_id(i) for i in range(sim.n_items_at(now_ms))]
    for index, (item, vector) in enumerate(zip(ids, embedder.vectors(ids))):
        # Stamped with the item's creation time: the index's freshness and cold-start rules use it.
        update = ItemUpdate(item, _arrival_ms(sim, index), category=_category(sim, item),
                            embedding=vector.astype(float).tolist())
        sender.produce(cfg.kafka.items_topic, update, item)
    sender.flush()


def _arrival_ms(sim: Simulator, index: int) -> int:
    """When item ``index`` joined the catalogue (the initial ones at the start)."""
    cfg = sim.config
    extra = index - cfg.n_items + 1
    if extra <= 0 or cfg.new_item_every_s is None:
        return sim.start_time_ms
    return sim.start_time_ms + int(extra * cfg.new_item_every_s * 1000)


def _category(sim: Simulator, item: str) -> str | None:
    index = int(item[1:])
    return f"c{int(sim.item_categories[index])}" if index < len(sim.item_categories) else None


class _ItemEmbedder:
    """Index vectors for items: the item tower over their current features in Redis.

    What the demo's item-embedding job does to every update on its way to the items topic.
    """

    def __init__(self, cfg: RtmlConfig, models: StartingModels) -> None:
        from engine.features.online import OnlineStore
        from engine.features.spec import views_from_config

        self.models = models
        self.dense = list(models.item_layout["dense"])
        self.store = OnlineStore(redis.Redis.from_url(cfg.redis.url or ""), views_from_config(cfg),
                                 cfg.redis.key_prefix)

    def vectors(self, ids: list[str]) -> np.ndarray:
        columns = [c.split(".", 1)[1] for c in self.dense]
        rows = self.store.get("item", ids, features=columns)
        features = {c: [row.values.get(col) if row.found else None for row in rows]
                    for c, col in zip(self.dense, columns)}
        return item_vectors(self.models, ids, features)

    def __call__(self, update: ItemUpdate) -> ItemUpdate:
        """A new or changed item's update, carrying its index vector (a new item's features are empty)."""
        vector = self.vectors([update.item_id])[0]
        return ItemUpdate(update.item_id, update.event_time, update.category, vector.astype(float).tolist(),
                          update.active, update.attributes)


async def _wait_recommend(target: str, plan: DemoPlan, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(RECOMMEND_METHOD, rtml_pb.RecommendRequest.SerializeToString,
                                   rtml_pb.RecommendResponse.FromString)
        while time.monotonic() < deadline:
            try:
                if len((await call(rtml_pb.RecommendRequest(user_id="u0", k=plan.k), timeout=3)).items) == plan.k:
                    return
            except grpc.aio.AioRpcError as exc:
                last = exc
            await asyncio.sleep(0.5)
    raise TimeoutError(f"Recommend did not answer within {timeout_s:.0f} s (last: {last})")


def _live_phase(cfg: RtmlConfig, plan: DemoPlan, sim: Simulator, events: Iterator[Any], first: Any,
                sender: _Sender, models: StartingModels, target: str, say: Any) -> tuple[DemoResults, float]:
    """Run the app and the organic traffic; returns the results so far and the phase's wall start."""
    live = _Live(time.monotonic())
    arrived: dict[str, float] = {}  # new items seen while live (for the progress lines)
    stop = threading.Event()
    organic = threading.Thread(target=_organic, args=(events, first, sender, stop, arrived), daemon=True)
    users = list(sim.user_ids)
    app = _App(cfg, target, sim, sender, users, live, plan)
    before = scrape_job(cfg)
    fresh_before = _freshness_buckets(cfg)
    fresh_steady: list[dict[float, float]] = []  # taken once the live phase's start-up is over

    # A live bar on a terminal (tqdm); a line every 5 s either way, so logs show progress too.
    bar = tqdm(total=int(plan.live_s), desc="live", unit="s", disable=None, leave=False,
               bar_format="{desc} {bar:20} {n_fmt}/{total_fmt} s {postfix}")
    lines = [0]

    def tick() -> None:
        t = time.monotonic() - live.started
        if t >= STEADY_AFTER_S and not fresh_steady:
            fresh_steady.append(_freshness_buckets(cfg))
        for learner, value in _learner_auc(cfg.metrics.learning_port, cfg.learning.processes).items():
            live.auc.setdefault(learner, []).append((t, value))
        aucs = ", ".join(f"{k} {v[-1][1]:.3f}" for k, v in live.auc.items()) or "warming up"
        bar.n = min(int(t), bar.total)
        bar.set_postfix_str(f"recommend {live.recommends} predict {live.predicts} clicks {live.clicks} AUC {aucs}")
        if t >= lines[0] * 5:
            lines[0] += 1
            drift = "  << taste drift injected" if plan.drift_at_s <= t < plan.drift_at_s + 5 else ""
            bar.write(f"[live {t:4.0f}s] recommend {live.recommends}, predict {live.predicts}, clicks "
                      f"{live.clicks}, new items {len(arrived)}, online AUC {aucs}{drift}")

    say(f"live: {plan.live_s:.0f} s of traffic, taste drift at {plan.drift_at_s:.0f} s, a new item every "
        f"{plan.new_item_every_s:.0f} s")
    organic.start()
    try:
        asyncio.run(app.run(plan.live_s, tick))
    finally:
        bar.close()
        stop.set()
        organic.join(10)
    after = scrape_job(cfg)
    seconds = time.monotonic() - live.started
    events_in = after.get("rtml_events_in_total", 0) - before.get("rtml_events_in_total", 0)
    fresh_after = _freshness_buckets(cfg)
    results = DemoResults(events_per_s=events_in / seconds, auc=live.auc, drift_at_s=plan.drift_at_s,
                          regret=live.regret, freshness_p50_ms=_freshness_ms(fresh_before, fresh_after, 0.5),
                          freshness_p99_ms=_freshness_ms(fresh_before, fresh_after, 0.99))
    if fresh_steady:
        results.steady_after_s = STEADY_AFTER_S
        results.steady_freshness_p50_ms = _freshness_ms(fresh_steady[0], fresh_after, 0.5)
        results.steady_freshness_p99_ms = _freshness_ms(fresh_steady[0], fresh_after, 0.99)
    results.notes.append(f"live phase: {live.recommends:,} Recommend and {live.predicts:,} Predict calls from the "
                         f"simulated app, {live.clicks:,} clicks; errors: {live.errors or 'none'}")
    results.notes.append("starting models, test AUC on the held-out split: "
                         + ", ".join(f"{k} {v:.3f}" for k, v in models.test_auc.items()))
    try:
        rewards = scrape(cfg.metrics.learning_port).get("rtml_bandit_rewards_total", 0.0)
    except OSError:
        rewards = float("nan")
    results.notes.append(f"exploration regret: the true CTR of the best cold item *for that user* at each explored "
                         f"slot minus that of the item explored, summed ({live.explore_regret:.2f} expected clicks; "
                         f"the exploration bandit is not contextual, so against a per-user oracle it keeps "
                         f"growing); the learning "
                         f"dataflow applied {rewards:,.0f} rewards to the exploration bandit from joined clicks")
    results.notes.append("the live phase's clock starts at 0 s; the drift was injected at the marked time")
    results.notes.append("drift references are the first full live window per feature: windowed counts that keep "
                         "growing with the app's own traffic (impressions_1h, clicks_5m, ...) read as data drift "
                         "before the injected taste drift too; the taste drift itself shows in the online AUC and "
                         "the concept-drift alerts")
    return results, time.time() - seconds


def _load_phase(target: str, sim: Simulator, plan: DemoPlan, say: Any) -> list[RpcStats]:
    from benchmarks.load import LoadConfig, run_load

    users = list(sim.user_ids)
    recommend = [rtml_pb.RecommendRequest(user_id=u, k=plan.k).SerializeToString() for u in users[:200]]
    rng = random.Random(plan.seed)
    predict = [rtml_pb.PredictRequest(model=CTR, instances=[
        rtml_pb.Instance(entity_ids={"user_id": u, "item_id": sim.item_id(rng.randrange(plan.n_items))})
        for _ in range(5)]).SerializeToString() for u in users[:200]]
    out: list[RpcStats] = []
    for rpc, method, payloads in (("Recommend", RECOMMEND_METHOD, recommend), ("Predict", PREDICT_METHOD, predict)):
        say(f"load: {rpc} at {plan.load_concurrency} concurrent requests for {plan.load_s:.0f} s")
        summary = run_load(LoadConfig(target=target, model=CTR, concurrency=plan.load_concurrency,
                                      duration_s=plan.load_s, warmup_s=1.0, method=method), payloads)
        out.append(RpcStats(rpc, summary["throughput_rps"] or 0.0, summary["p50_ms"] or float("nan"),
                            summary["p99_ms"] or float("nan")))
    return out


def _collect(cfg: RtmlConfig, results: DemoResults, started_wall: float) -> None:
    """Freshness, drift alerts and the A/B verdict, read back from the dataflows and Kafka."""
    from engine.events.topic_reader import read_topic
    from engine.rollouts.outcomes import tally_for_config
    from engine.rollouts.verdict import ab_verdict

    bootstrap = str(cfg.kafka.bootstrap)
    for raw in read_topic(bootstrap, cfg.kafka.alerts_topic):
        alert = orjson.loads(raw)
        if "at_ms" in alert and "statistic" in alert:
            results.alerts.append(AlertMark(alert["at_ms"] / 1000 - started_wall, alert["kind"], alert["feature"],
                                            alert["statistic"], alert.get("value")))
    results.alerts.sort()
    predictions = read_topic(bootstrap, cfg.learning.predictions_topic)
    outcomes = read_topic(bootstrap, cfg.kafka.events_topic)
    tally = tally_for_config(cfg, CTR, predictions, outcomes, since_ms=int(started_wall * 1000))
    verdict = ab_verdict(CTR, tally.arms, control="control", min_samples=200)
    results.ab_verdict = "; ".join(c.text for c in verdict.comparisons) or "; ".join(verdict.notes)
    results.ab_table = Table(["variant", "versions", "impressions", "clicks", "CTR"],
                             [[a.variant, ",".join(a.versions), a.impressions, a.clicks, f"{a.ctr:.4f}"]
                              for a in verdict.arms])
