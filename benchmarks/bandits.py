"""Bandits benchmark: regret and decisions/s of rtml's policies next to MABWiser's, and through Redis.

Run from the repository root::

    python -m benchmarks.bandits            # ~3 minutes on 2 cores
    python -m benchmarks.bandits --quick    # ~10 s: 5k rounds, 2 seeds, short timings
    python -m benchmarks.bandits --no-readme --out DIR

1. *Regret*: a fixed Bernoulli environment, 20 arms with means ``linspace(0, 0.6, 20)`` (the
   one of ``tests/engine/bandits/test_policies.py``), 100k rounds, several seeds. Per seed
   ``s`` both libraries get the same reward stream (``default_rng(100 + s)``: arm ``i`` pays 1
   at round ``t`` when ``u[t] < mean[i]``) and a policy seeded with ``s``. Both start by
   playing every arm once in order (UCB1's initialisation; MABWiser's UCB1 and ε-greedy
   would otherwise never try an arm they start without data for), counted in the regret.
   Regret is the pseudo-regret ``sum(max(mean) - mean[chosen])``. Policies: Thompson sampling
   (Beta(1, 1) priors), UCB1 (``mean + sqrt(2 ln N / n)``: our ``c=2``, MABWiser's ``alpha=1``),
   ε-greedy with ε = 0.01 on both sides.
2. *Decisions/s per core*: CPU time (``time.process_time``) of a single thread, so the
   figure is per core whatever else the machine runs. ``decisions/s``: ``choose()`` vs
   MABWiser's ``predict()`` on a state trained for 2,000 rounds; ``rounds/s``: choose, reward,
   ``update()`` vs ``predict()`` + ``partial_fit()``. MABWiser is the floor (the reference):
   ``ratio_to_floor`` = ours / MABWiser. Best of three timed blocks. LinUCB (d = 10) is
   timed too (its decisions equal MABWiser's, see the tests).
3. *Through Redis* (an embedded ``redis-server`` on loopback, :class:`RedisBandit`, Thompson,
   20 arms): decisions/s with a fresh snapshot per decision (``refresh_s=0``: one HGETALL
   each) and from a snapshot (``refresh_s=1``), rewards/s one by one (one MULTI/EXEC each)
   and batched through :class:`BanditRewarder` (1,000 per round trip), wall-clock from one
   client thread (Redis runs on another core) with the client's CPU per operation; and the
   snapshot reload a Choose may wait for, inline and through ``asyncio.to_thread``
   (:mod:`serving.bandits` runs it in a thread).

Targets (the issue): Thompson regret ≤ 390 on 20 arms × 100k rounds (every seed), ≥ 20k
decisions/s per core.

Results: ``benchmarks/results/bandits.json`` and the README table between
``<!-- bench:bandits:start -->`` / ``<!-- bench:bandits:end -->``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from benchmarks.report import fmt_rate, machine_description, machine_line, publish, reprint_from_json
from engine.bandits.policies import EpsilonGreedy, LinUCB, ThompsonSampling, UCB1

NAME = "bandits"
N_ARMS = 20
MEANS = np.linspace(0.0, 0.6, N_ARMS)
EPSILON = 0.01
TARGETS: dict[str, Any] = {"thompson_max_regret": 390, "min_decisions_per_s_per_core": 20_000}
POLICIES = ("thompson", "ucb1", "epsilon_greedy")


def log(message: str) -> None:
    print(f"[bandits] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class Plan:
    rounds: int = 100_000
    seeds: tuple[int, ...] = (0, 1, 2)
    decisions: int = 50_000  # choose() calls per timed block (ours)
    reference_decisions: int = 10_000  # predict() calls per timed block (MABWiser)
    blocks: int = 3
    redis_ops: int = 5_000

    @classmethod
    def quick(cls) -> "Plan":
        return cls(rounds=5_000, seeds=(0, 1), decisions=5_000, reference_decisions=1_000, blocks=2, redis_ops=500)


# -- the two libraries behind one small interface ------------------------------------------------


class Ours:
    """An rtml policy: ``choose()`` / ``update(arm, reward)``."""

    library = "rtml"

    def __init__(self, kind: str, seed: int, arms: Sequence[int] = range(N_ARMS)) -> None:
        rng = np.random.default_rng(seed)
        self.policy: Any = {
            "thompson": lambda: ThompsonSampling(arms, rng=rng),
            "ucb1": lambda: UCB1(arms, c=2.0),
            "epsilon_greedy": lambda: EpsilonGreedy(arms, rng=rng, epsilon=EPSILON),
        }[kind]()
        self.choose = self.policy.choose
        self.update = self.policy.update

    def warm(self, arms: Sequence[int], rewards: Sequence[float]) -> None:
        for arm, reward in zip(arms, rewards):
            self.update(arm, reward)


class Reference:
    """The same policy in MABWiser: ``predict()`` / ``partial_fit([arm], [reward])``."""

    library = "mabwiser"

    def __init__(self, kind: str, seed: int, arms: Sequence[int] = range(N_ARMS)) -> None:
        from mabwiser.mab import MAB, LearningPolicy

        policy = {
            "thompson": lambda: LearningPolicy.ThompsonSampling(),
            "ucb1": lambda: LearningPolicy.UCB1(alpha=1.0),
            "epsilon_greedy": lambda: LearningPolicy.EpsilonGreedy(epsilon=EPSILON),
        }[kind]()
        self.mab = MAB(list(arms), policy, seed=seed)
        self.choose = self.mab.predict

    def update(self, arm: int, reward: float) -> None:
        self.mab.partial_fit([arm], [reward])

    def warm(self, arms: Sequence[int], rewards: Sequence[float]) -> None:
        self.mab.fit(list(arms), list(rewards))


Factory = Callable[[str, int], Any]
LIBRARIES: dict[str, Factory] = {"rtml": Ours, "mabwiser": Reference}


# -- regret --------------------------------------------------------------------------------------


def simulate(bandit: Any, rounds: int, seed: int) -> float:
    """Pseudo-regret of ``rounds`` rounds on :data:`MEANS`, arms first played once each in order."""
    u = np.random.default_rng(100 + seed).random(rounds)
    means = MEANS.tolist()
    k = min(N_ARMS, rounds)
    bandit.warm(list(range(k)), [1.0 if u[t] < means[t] else 0.0 for t in range(k)])
    chosen = list(range(k))
    choose, update = bandit.choose, bandit.update
    for t in range(k, rounds):
        arm = choose()
        chosen.append(arm)
        update(arm, 1.0 if u[t] < means[arm] else 0.0)
    return float(MEANS.max() * rounds - MEANS[np.asarray(chosen)].sum())


def regret_table(plan: Plan) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in POLICIES:
        out[kind] = {}
        for library, factory in LIBRARIES.items():
            per_seed = []
            for seed in plan.seeds:
                t0 = time.perf_counter()
                per_seed.append(round(simulate(factory(kind, seed), plan.rounds, seed), 2))
                log(f"regret {kind:<15} {library:<9} seed {seed}: {per_seed[-1]:8.1f} ({time.perf_counter() - t0:.1f}s)")
            out[kind][library] = {
                "per_seed": per_seed,
                "mean": round(statistics.fmean(per_seed), 2),
                "min": min(per_seed),
                "max": max(per_seed),
            }
    return out


# -- decisions/s per core --------------------------------------------------------------------------


def _best_rate(block: Callable[[], int], blocks: int) -> float:
    """Operations per CPU-second of the best of ``blocks`` timed blocks."""
    rates = []
    for _ in range(blocks):
        t0 = time.process_time()
        n = block()
        rates.append(n / max(time.process_time() - t0, 1e-9))
    return max(rates)


def _trained(factory: Factory, kind: str) -> Any:
    bandit = factory(kind, 0)
    simulate(bandit, 2_000, seed=0)
    return bandit


def _rates(bandit: Any, decisions: int, blocks: int) -> dict[str, float]:
    env = np.random.default_rng(5).random(decisions)
    means = MEANS.tolist()
    choose, update = bandit.choose, bandit.update

    def decide() -> int:
        for _ in range(decisions):
            choose()
        return decisions

    def play() -> int:
        for t in range(decisions):
            arm = choose()
            update(arm, 1.0 if env[t] < means[arm] else 0.0)
        return decisions

    return {
        "decisions_per_s": round(_best_rate(decide, blocks), 1),
        "rounds_per_s": round(_best_rate(play, blocks), 1),
    }


def _linucb_rates(plan: Plan, d: int = 10) -> dict[str, Any]:
    from mabwiser.mab import MAB, LearningPolicy

    rng = np.random.default_rng(3)
    arms = list(range(N_ARMS))
    warm_x = rng.normal(size=(2_000, d))
    warm_a = rng.integers(N_ARMS, size=2_000)
    warm_r = rng.normal(size=2_000)
    ours = LinUCB(arms, n_features=d)
    for a, r, x in zip(warm_a.tolist(), warm_r, warm_x):
        ours.update(a, r, x)
    ref = MAB(arms, LearningPolicy.LinUCB(alpha=1.0), seed=0)
    ref.fit(warm_a.tolist(), warm_r, warm_x)
    xs = rng.normal(size=(max(plan.decisions, plan.reference_decisions), d))

    def ours_decide(n: int) -> Callable[[], int]:
        def block() -> int:
            for x in xs[:n]:
                ours.choose(x)
            return n
        return block

    def ours_play(n: int) -> Callable[[], int]:
        def block() -> int:
            for x in xs[:n]:
                ours.update(ours.choose(x), 0.5, x)
            return n
        return block

    def ref_decide(n: int) -> Callable[[], int]:
        rows = xs[:n, None, :]  # one context per predict(), as a server would call it

        def block() -> int:
            for row in rows:
                ref.predict(row)
            return n
        return block

    def ref_play(n: int) -> Callable[[], int]:
        rows = xs[:n, None, :]

        def block() -> int:
            for row in rows:
                ref.partial_fit([ref.predict(row)], [0.5], row)
            return n
        return block

    n_ours, n_ref = plan.decisions // 5, plan.reference_decisions // 5
    result = {
        "context_dim": d,
        "rtml": {"decisions_per_s": round(_best_rate(ours_decide(n_ours), plan.blocks), 1),
                 "rounds_per_s": round(_best_rate(ours_play(n_ours), plan.blocks), 1)},
        "mabwiser": {"decisions_per_s": round(_best_rate(ref_decide(n_ref), plan.blocks), 1),
                     "rounds_per_s": round(_best_rate(ref_play(n_ref), plan.blocks), 1)},
    }
    _ratios(result)
    return result


def _ratios(entry: dict[str, Any]) -> None:
    ours, ref = entry["rtml"], entry["mabwiser"]
    entry["ratio_to_floor"] = round(ours["decisions_per_s"] / ref["decisions_per_s"], 3)
    entry["ratio_to_floor_rounds"] = round(ours["rounds_per_s"] / ref["rounds_per_s"], 3)


def throughput_table(plan: Plan) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in POLICIES:
        entry: dict[str, Any] = {}
        for library, factory in LIBRARIES.items():
            n = plan.decisions if library == "rtml" else plan.reference_decisions
            entry[library] = _rates(_trained(factory, kind), n, plan.blocks)
        _ratios(entry)
        out[kind] = entry
        log(f"throughput {kind:<15} rtml {fmt_rate(entry['rtml']['decisions_per_s'])}/s, "
            f"mabwiser {fmt_rate(entry['mabwiser']['decisions_per_s'])}/s, ratio {entry['ratio_to_floor']}")
    out["linucb"] = _linucb_rates(plan)
    log(f"throughput linucb          rtml {fmt_rate(out['linucb']['rtml']['decisions_per_s'])}/s, "
        f"mabwiser {fmt_rate(out['linucb']['mabwiser']['decisions_per_s'])}/s")
    return out


# -- through Redis ---------------------------------------------------------------------------------


def _timed(fn: Callable[[], int]) -> dict[str, float]:
    """Wall-clock rate and client CPU µs per operation of one block."""
    w0, c0 = time.perf_counter(), time.process_time()
    n = fn()
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return {"per_s": round(n / wall, 1), "client_cpu_us_per_op": round(1e6 * cpu / n, 1)}


def redis_table(plan: Plan, redis_url: str | None = None) -> dict[str, Any]:
    import redis

    from engine.bandits.rewards import BanditRewarder
    from engine.bandits.spec import parse_bandit_specs
    from engine.learning.records import JoinedExample, PredictionRecord
    from engine.runtime.redis_server import EmbeddedRedis

    embedded = None if redis_url else EmbeddedRedis().start()
    url = redis_url or embedded.url  # type: ignore[union-attr]
    client = redis.Redis.from_url(url)
    prefix = f"bench-{time.time_ns()}"
    arms = [f"arm{i}" for i in range(N_ARMS)]
    specs = parse_bandit_specs({"bandits": [
        {"name": "ts", "policy": "thompson", "arms": arms},
        {"name": "lin", "policy": "linucb", "arms": arms, "context_dim": 10},
    ]})
    n = plan.redis_ops
    try:
        fresh = specs[0].redis_bandit(client, prefix=prefix, rng=1)
        fresh.refresh_s = 0.0
        env = np.random.default_rng(7).random(n)
        means = dict(zip(arms, MEANS.tolist()))

        def updates() -> int:
            for t in range(n):
                arm = arms[t % N_ARMS]
                fresh.update(arm, 1.0 if env[t] < means[arm] else 0.0)
            return n

        def decisions() -> int:
            for _ in range(n):
                fresh.choose()
            return n

        result: dict[str, Any] = {"policy": "thompson", "arms": N_ARMS}
        result["rewards_one_by_one"] = _timed(updates)
        result["decisions_refresh_every_time"] = _timed(decisions)
        snap = specs[0].redis_bandit(client, prefix=prefix, rng=2)  # refresh_s 1.0 from the spec

        def snapshot_decisions() -> int:
            for _ in range(n * 10):
                snap.choose()
            return n * 10

        result["decisions_from_snapshot"] = _timed(snapshot_decisions)

        rewarder = BanditRewarder(client, specs, prefix=prefix)
        clicks = np.random.default_rng(8).random(1_000) < 0.3
        batch = [
            JoinedExample(PredictionRecord(f"r{t}", "ts", "0", "bandit", 1, None, arm=arms[t % N_ARMS]),
                          float(clicks[t]), "implicit", 2)
            for t in range(1_000)
        ]
        batches = max(1, n // 1_000)

        def batched() -> int:
            for _ in range(batches):
                rewarder.apply(batch)
            return batches * len(batch)

        result["rewards_batched_1000"] = _timed(batched)
        result["reload_ms"] = _reload_latency(specs, client, prefix)
    finally:
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)
        client.close()
        if embedded is not None:
            embedded.stop()
    return result


def _reload_latency(specs: Sequence[Any], client: Any, prefix: str, samples: int = 200) -> dict[str, Any]:
    """Median ms of a snapshot reload (HGETALL + parse + rebuild), inline and via a thread."""
    out: dict[str, Any] = {}
    for spec in specs:
        bandit = spec.redis_bandit(client, prefix=prefix)

        def inline() -> float:
            t0 = time.perf_counter()
            bandit.load()
            return time.perf_counter() - t0

        async def threaded() -> list[float]:
            times = []
            for _ in range(samples):
                t0 = time.perf_counter()
                await asyncio.to_thread(bandit.load)
                times.append(time.perf_counter() - t0)
            return times

        inline_ms = statistics.median(inline() for _ in range(samples)) * 1e3
        thread_ms = statistics.median(asyncio.run(threaded())) * 1e3
        label = spec.policy if spec.context_dim is None else f"{spec.policy} (d={spec.context_dim})"
        out[label] = {"inline_ms": round(inline_ms, 3), "to_thread_ms": round(thread_ms, 3)}
    return out


# -- the run ---------------------------------------------------------------------------------------


def run_benchmark(plan: Plan = Plan(), redis_url: str | None = None, with_redis: bool = True) -> dict[str, Any]:
    t0 = time.perf_counter()
    regret = regret_table(plan)
    throughput = throughput_table(plan)
    redis_result = redis_table(plan, redis_url) if with_redis else None
    ts_max = regret["thompson"]["rtml"]["max"]
    slowest = min(throughput[k]["rtml"]["decisions_per_s"] for k in POLICIES)
    targets = {
        "thompson_max_regret": {
            "target": TARGETS["thompson_max_regret"], "value": ts_max,
            "met": bool(plan.rounds == 100_000 and ts_max <= TARGETS["thompson_max_regret"]),
        },
        "min_decisions_per_s_per_core": {
            "target": TARGETS["min_decisions_per_s_per_core"], "value": slowest,
            "met": bool(slowest >= TARGETS["min_decisions_per_s_per_core"]),
        },
    }
    return {
        "benchmark": NAME,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine_description(),
        "plan": {"rounds": plan.rounds, "seeds": list(plan.seeds), "decisions_per_block": plan.decisions,
                 "reference_decisions_per_block": plan.reference_decisions, "blocks": plan.blocks,
                 "redis_ops": plan.redis_ops},
        "environment": {"arms": N_ARMS, "means": "linspace(0.0, 0.6, 20)", "best_gap": round(float(MEANS[-1] - MEANS[-2]), 4),
                        "epsilon": EPSILON, "reward_stream": "default_rng(100 + seed)", "policy_seed": "seed",
                        "init": "every arm played once, in order, by both libraries (counted in regret)"},
        "regret": regret,
        "throughput": throughput,
        "redis": redis_result,
        "targets": targets,
        "notes": [
            "decisions/s and rounds/s are per CPU-second of one thread (time.process_time): per core.",
            "ratio_to_floor = rtml / MABWiser decisions/s (MABWiser is the reference); ratio_to_floor_rounds "
            "the same for choose + update rounds.",
            "UCB1 and epsilon-greedy decide deterministically between updates (bar epsilon's coin): MABWiser "
            "precomputes expectations in partial_fit, rtml caches the choice until the next update, so both "
            "decide from a fixed state with a lookup; rounds/s (choose + update) is the like-for-like cost.",
            "Redis figures are wall-clock from one client thread to an embedded redis-server on loopback, with "
            "the client's CPU per operation.",
        ],
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _f(value: Any, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def markdown_table(result: Mapping[str, Any]) -> str:
    """The README block: regret, decisions/s per core, Redis."""
    plan, t = result["plan"], result["targets"]
    lines = [
        f"Bandits, 20 Bernoulli arms (means 0 to 0.6), {plan['rounds']:,} rounds, seeds {plan['seeds']}, "
        f"same reward streams for rtml and MABWiser 2.7 ({machine_line(result['machine'])}; {result['date']}).",
        "",
        "| policy | rtml regret (mean, max) | MABWiser regret (mean, max) | rtml decisions/s per core "
        "| MABWiser decisions/s | ratio to floor | rtml rounds/s | MABWiser rounds/s | ratio (rounds) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind in (*POLICIES, "linucb"):
        th = result["throughput"][kind]
        rg = result["regret"].get(kind)
        ours_regret = f"{_f(rg['rtml']['mean'], 0)} ({_f(rg['rtml']['max'], 0)})" if rg else "—"
        ref_regret = f"{_f(rg['mabwiser']['mean'], 0)} ({_f(rg['mabwiser']['max'], 0)})" if rg else "—"
        label = kind if kind != "linucb" else f"linucb (d={th['context_dim']}, no regret run)"
        lines.append(
            f"| {label} | {ours_regret} | {ref_regret} | {fmt_rate(th['rtml']['decisions_per_s'])} "
            f"| {fmt_rate(th['mabwiser']['decisions_per_s'])} | {_f(th['ratio_to_floor'], 2)} "
            f"| {fmt_rate(th['rtml']['rounds_per_s'])} | {fmt_rate(th['mabwiser']['rounds_per_s'])} "
            f"| {_f(th['ratio_to_floor_rounds'], 2)} |"
        )
    r = result.get("redis")
    if r:
        reload = "; ".join(f"{k} {v['inline_ms']:.2f} ms inline, {v['to_thread_ms']:.2f} ms via a thread"
                           for k, v in r["reload_ms"].items())
        lines += [
            "",
            "| RedisBandit (thompson, 20 arms, embedded Redis) | per second | client CPU µs/op |",
            "| --- | ---: | ---: |",
        ]
        for key, label in (("decisions_from_snapshot", "decisions from a snapshot (refresh_s=1)"),
                           ("decisions_refresh_every_time", "decisions reloading every time (refresh_s=0)"),
                           ("rewards_one_by_one", "rewards, one MULTI/EXEC each"),
                           ("rewards_batched_1000", "rewards through BanditRewarder, 1,000 per round trip")):
            lines.append(f"| {label} | {fmt_rate(r[key]['per_s'])} | {_f(r[key]['client_cpu_us_per_op'])} |")
        lines += ["", f"Snapshot reload (what a stale Choose waits for): {reload}."]
    ts, dec = t["thompson_max_regret"], t["min_decisions_per_s_per_core"]
    lines += [
        "",
        f"Targets: Thompson regret ≤ {ts['target']} on every seed: {_f(ts['value'], 0)}, "
        f"{'met' if ts['met'] else 'not met'}; ≥ {dec['target']:,} decisions/s per core: slowest "
        f"{fmt_rate(dec['value'])}, {'met' if dec['met'] else 'not met'}. "
        "Reproduce: `python -m benchmarks.bandits` (results in `benchmarks/results/bandits.json`).",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bandits", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="5k rounds, 2 seeds, short timings (~10 s)")
    p.add_argument("--rounds", type=int, default=None, help="rounds per regret run (default 100000)")
    p.add_argument("--redis-url", default=None, help="use this Redis instead of an embedded one")
    p.add_argument("--no-redis", action="store_true", help="skip the RedisBandit measurements")
    p.add_argument("--out", default=None, help="results directory (default benchmarks/results)")
    p.add_argument("--name", default=NAME, help="result file name without .json (default bandits)")
    p.add_argument("--no-readme", action="store_true", help="do not update the README table")
    p.add_argument("--from-json", default=None, metavar="PATH",
                   help="run nothing: print the table of an earlier result file (and update the README)")
    args = p.parse_args(argv)
    if args.from_json:
        return reprint_from_json(args.from_json, args.name, markdown_table, not args.no_readme)
    plan = Plan.quick() if args.quick else Plan()
    if args.rounds is not None:
        plan = dataclasses.replace(plan, rounds=args.rounds)
    result = run_benchmark(plan, redis_url=args.redis_url, with_redis=not args.no_redis)
    path = publish(args.name, result, markdown_table, args.out, readme=not args.no_readme)
    log(f"wrote {path} in {result['seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
