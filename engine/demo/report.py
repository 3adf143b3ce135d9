"""The demo's report: what a run measured, as markdown with plots.

:class:`DemoResults` holds the numbers a demo run collects (ingest rate, feature
freshness, serving latency per RPC, online AUC per learner, drift alerts, bandit
regret, an A/B verdict); :func:`write_report` renders them as ``report.md`` plus PNGs
(matplotlib's Agg canvas, no display needed) and returns the markdown's path. Times
``t_s`` are seconds since the run started, the same clock as ``drift_at_s``.

>>> alerts = [AlertMark(12.0, "data_drift", "user.ctr_1h", "psi"), AlertMark(41.5, "concept_drift", "error", "hddm_a")]
>>> first_alert_delay(alerts, drift_at_s=30.0)
11.5
>>> false_alarms(alerts, drift_at_s=30.0)
1
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure


class RpcStats(NamedTuple):
    """Serving throughput and latency of one RPC (``Recommend``, ``Predict``, ...)."""

    rpc: str
    requests_per_s: float
    p50_ms: float
    p99_ms: float


class AlertMark(NamedTuple):
    """One drift alert: when (``t_s``), which ``kind``, on which ``feature``, by which ``statistic``."""

    t_s: float
    kind: str
    feature: str
    statistic: str
    value: float | None = None


@dataclass(frozen=True, slots=True)
class Table:
    """A small table: column names and rows of cells (numbers or text)."""

    columns: list[str]
    rows: list[list[str | float | int]]

    def __post_init__(self) -> None:
        for row in self.rows:
            if len(row) != len(self.columns):
                raise ValueError(f"row {row}: expected {len(self.columns)} cells ({self.columns})")


@dataclass(slots=True)
class DemoResults:
    """Everything a demo run reports. Series are ``(t_s, value)`` pairs in time order."""

    events_per_s: float  # events ingested by the features dataflow, per second
    freshness_p50_ms: float | None = None  # feature freshness (write wall clock - event time)
    freshness_p99_ms: float | None = None
    # The same after the live phase's first seconds, while learning, drift and serving start up.
    steady_freshness_p50_ms: float | None = None
    steady_freshness_p99_ms: float | None = None
    steady_after_s: float | None = None
    rpcs: list[RpcStats] = field(default_factory=list)
    auc: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # learner -> online AUC
    drift_at_s: float | None = None  # the true (simulated) drift time
    alerts: list[AlertMark] = field(default_factory=list)
    regret: list[tuple[float, float]] = field(default_factory=list)  # cumulative bandit regret
    ab_verdict: str | None = None
    ab_table: Table | None = None
    notes: list[str] = field(default_factory=list)


def first_alert_delay(alerts: Sequence[AlertMark], drift_at_s: float | None, kind: str | None = None) -> float | None:
    """Seconds from the true drift to the first alert at or after it (of ``kind``, if given); None: none."""
    if drift_at_s is None:
        return None
    times = [a.t_s for a in alerts if a.t_s >= drift_at_s and (kind is None or a.kind == kind)]
    return min(times) - drift_at_s if times else None


def false_alarms(alerts: Sequence[AlertMark], drift_at_s: float | None) -> int:
    """Alerts raised before the true drift (all of them when there was no drift)."""
    return sum(1 for a in alerts if drift_at_s is None or a.t_s < drift_at_s)


# -- formatting: one place, so the text and its tests agree -------------------------------------


def _ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f} ms"


def _s(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f} s"


def _cell(x: str | float | int) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x).replace("|", "\\|")


def _table(columns: Sequence[str], rows: Sequence[Sequence[str | float | int]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _auc(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _last_before(series: Sequence[tuple[float, float]], t: float | None, inclusive: bool = False) -> float | None:
    before = [v for ts, v in series if t is not None and (ts <= t if inclusive else ts < t)]
    return before[-1] if before else None


def _auc_summary(series: Sequence[tuple[float, float]], drift_at_s: float | None) -> list[float | None]:
    """First value, last before the drift, lowest after it, final value."""
    after = [v for t, v in series if drift_at_s is not None and t >= drift_at_s]
    first, final = (series[0][1], series[-1][1]) if series else (None, None)
    return [first, _last_before(series, drift_at_s), min(after) if after else None, final]


# -- plots ----------------------------------------------------------------------------------------


def _drift_line(ax: Axes, drift_at_s: float | None) -> None:
    if drift_at_s is not None:
        ax.axvline(drift_at_s, color="black", linestyle="--", linewidth=1, label=f"true drift ({_s(drift_at_s)})")


def _plot_auc(results: DemoResults, path: Path) -> None:
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    for learner, series in results.auc.items():
        ax.plot([t for t, _ in series], [v for _, v in series], marker=".", label=learner)
    _drift_line(ax, results.drift_at_s)
    # Alerts as markers along the top, one marker shape per kind.
    top = max((v for s in results.auc.values() for _, v in s), default=1.0)
    for marker, kind in zip("v^sDo*", sorted({a.kind for a in results.alerts})):
        times = [a.t_s for a in results.alerts if a.kind == kind]
        ax.scatter(times, [top + 0.01] * len(times), marker=marker, color="tab:red", label=f"alert: {kind}")
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("online AUC")
    ax.set_title("Online AUC, true drift and drift alerts")
    ax.legend(loc="best", fontsize="small")
    fig.savefig(path, dpi=100)


def _plot_regret(results: DemoResults, path: Path) -> None:
    fig = Figure(figsize=(8, 4))
    ax = fig.add_subplot()
    ax.plot([t for t, _ in results.regret], [v for _, v in results.regret], color="tab:purple")
    _drift_line(ax, results.drift_at_s)
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("cumulative regret (expected clicks)")
    ax.set_title("Bandit regret")
    if results.drift_at_s is not None:
        ax.legend(loc="upper left", fontsize="small")
    fig.savefig(path, dpi=100)


def _plot_latency(results: DemoResults, path: Path) -> None:
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    xs = range(len(results.rpcs))
    ax.bar([x - 0.2 for x in xs], [r.p50_ms for r in results.rpcs], width=0.4, label="p50")
    ax.bar([x + 0.2 for x in xs], [r.p99_ms for r in results.rpcs], width=0.4, label="p99")
    ax.set_xticks(list(xs), [r.rpc for r in results.rpcs])
    ax.set_ylabel("latency (ms)")
    ax.set_title("Serving latency per RPC")
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=100)


# -- the report ----------------------------------------------------------------------------------


def _markdown(r: DemoResults, plots: dict[str, str]) -> str:
    out = ["# rtml demo report", "", "## Ingest and features", ""]
    out += _table(["measure", "value"], [
        ["events ingested per second", f"{r.events_per_s:,.0f}"],
        ["feature freshness p50", _ms(r.freshness_p50_ms)],
        ["feature freshness p99", _ms(r.freshness_p99_ms)],
        *([[f"feature freshness p50 / p99 after the first {r.steady_after_s:.0f} s",
            f"{_ms(r.steady_freshness_p50_ms)} / {_ms(r.steady_freshness_p99_ms)}"]]
          if r.steady_after_s is not None else []),
    ])
    if r.rpcs:
        out += ["", "## Serving", ""]
        out += _table(["RPC", "requests/s", "p50", "p99"],
                      [[s.rpc, f"{s.requests_per_s:,.0f}", _ms(s.p50_ms), _ms(s.p99_ms)] for s in r.rpcs])
        out += ["", f"![latency]({plots['latency']})"]
    out += ["", "## Online learning and drift", "",
            f"True drift at {_s(r.drift_at_s)}." if r.drift_at_s is not None else "No drift was simulated."]
    if r.auc:
        rows = [[learner, *(_auc(v) for v in _auc_summary(series, r.drift_at_s))] for learner, series in r.auc.items()]
        out += [""] + _table(["learner", "first AUC", "AUC before drift", "lowest AUC after drift", "final AUC"], rows)
        out += ["", f"![online AUC]({plots['auc']})"]
    delay = first_alert_delay(r.alerts, r.drift_at_s)
    out += ["", f"Drift alerts: {len(r.alerts)}; first alert after the drift: "
                f"{'+' + _s(delay) if delay is not None else 'none'}; "
                f"false alarms (before the drift): {false_alarms(r.alerts, r.drift_at_s)}."]
    kinds = sorted({a.kind for a in r.alerts})
    if kinds and r.drift_at_s is not None:
        out += ["", *(f"* first `{k}` alert after the drift: "
                      f"{'+' + _s(d) if (d := first_alert_delay(r.alerts, r.drift_at_s, k)) is not None else 'none'}"
                      for k in kinds)]
    if r.alerts:
        out += [""] + _table(["kind", "feature", "alerts", "first", "last", "statistics (first value)"],
                             _alert_rows(r.alerts))
    if r.regret:
        at_drift = _last_before(r.regret, r.drift_at_s, inclusive=True)
        out += ["", "## Bandit regret", "",
                f"Cumulative exploration regret (expected clicks lost against the best cold item at each "
                f"explored slot): {r.regret[-1][1]:.1f} "
                f"after {_s(r.regret[-1][0])}"
                + (f"; {at_drift:.1f} at the drift." if at_drift is not None else "."),
                "", f"![regret]({plots['regret']})"]
    if r.ab_verdict or r.ab_table:
        out += ["", "## A/B test", ""]
        if r.ab_verdict:
            out += [r.ab_verdict]
        if r.ab_table:
            out += [""] + _table(r.ab_table.columns, r.ab_table.rows)
    if r.notes:
        out += ["", "## Notes", "", *(f"* {n}" for n in r.notes)]
    series = [(name, s) for name, s in [*(("AUC " + k, v) for k, v in r.auc.items()), ("regret", r.regret)] if s]
    if series:
        out += ["", "<details><summary>Series</summary>", ""]
        for name, s in series:
            out += [f"**{name}**", ""] + _table(["t (s)", "value"],
                                                [[f"{t:.1f}", f"{v:.4g}"] for t, v in _thin(s)]) + [""]
        out += ["</details>"]
    return "\n".join(out) + "\n"


def _alert_rows(alerts: Sequence[AlertMark]) -> list[list[str | float | int]]:
    """One row per (kind, feature): how many alerts, when, and each statistic's first value."""
    groups: dict[tuple[str, str], list[AlertMark]] = {}
    for a in sorted(alerts):
        groups.setdefault((a.kind, a.feature), []).append(a)
    rows: list[list[str | float | int]] = []
    for (kind, feature), marks in sorted(groups.items(), key=lambda kv: kv[1][0].t_s):
        first: dict[str, float | None] = {}
        for a in marks:
            first.setdefault(a.statistic, a.value)
        stats = ", ".join(f"{k} {'' if v is None else f'{v:.4g}'}".strip() for k, v in first.items())
        rows.append([kind, feature, len(marks), _s(marks[0].t_s), _s(marks[-1].t_s), stats])
    return rows


def _thin(series: Sequence[tuple[float, float]], most: int = 40) -> list[tuple[float, float]]:
    """At most ``most`` points of a series, evenly spaced, the last one kept."""
    if len(series) <= most:
        return list(series)
    step = len(series) / most
    picked = [series[int(i * step)] for i in range(most - 1)]
    return picked + [series[-1]]


def write_report(results: DemoResults, out_dir: str | Path) -> Path:
    """Write ``report.md`` and its PNGs (only the plots that have data) into ``out_dir``; return the markdown path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots: dict[str, str] = {}
    for name, has_data, draw in (
        ("auc", bool(results.auc), _plot_auc),
        ("regret", bool(results.regret), _plot_regret),
        ("latency", bool(results.rpcs), _plot_latency),
    ):
        if has_data:
            draw(results, out / f"{name}.png")
            plots[name] = f"{name}.png"  # relative: the directory can be moved as a whole
    path = out / "report.md"
    path.write_text(_markdown(results, plots))
    return path


__all__ = ["AlertMark", "DemoResults", "RpcStats", "Table", "false_alarms", "first_alert_delay", "write_report"]
