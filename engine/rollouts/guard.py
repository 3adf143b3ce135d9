"""Canary guardrails: roll a canary back automatically when its error rate or p99 latency breach a limit.

The guard scrapes serving's ``/metrics`` (:mod:`engine.rollouts.scrape`) and keeps the
previous scrape as a baseline. Over the window since the baseline it computes, for the canary
version (and, for comparison, the primary):

* error rate = failures / (successes + failures), failures of every reason but
  ``cancelled`` (the client went away: not the version's fault);
* p99 latency = ``histogram_quantile(0.99)`` of the request-duration bucket deltas
  (successful requests only, as serving records them).

A window is judged only once the canary has served ``min_requests`` in it; until then the
baseline stays, so a quiet canary is judged over a longer window rather than never. A
judged window that passes becomes the next baseline. On a breach the guard calls
:func:`engine.rollouts.routing.rollback` with the canary version (the canary is removed and
the primary stays pinned) and a reason that names the breach and its numbers, so it lands
in ``rollouts.jsonl``. The guard stops by itself when the routing no longer has a canary
(promoted, rolled back by hand).

The metrics are per version, not per variant: requests pinned to the canary version, or a
shadow scoring by it, count too.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from engine.rollouts.routing import Outcome, model_versions, read_routing, rollback, serving_primary
from engine.rollouts.scrape import Scrape, VersionCounters, scrape

log = logging.getLogger(__name__)

GUARD_ACTOR = "rtml rollout guard"


@dataclass(frozen=True, slots=True)
class GuardSettings:
    """Limits of the canary guard."""

    max_error_rate: float = 0.01
    max_p99_ms: float = 50.0
    min_requests: int = 100
    quantile: float = 0.99
    ignore_reasons: tuple[str, ...] = ("cancelled",)


@dataclass(frozen=True, slots=True)
class VersionHealth:
    """One version over the window: requests, failures, error rate, p99 (ms; None without successes)."""

    version: str
    requests: int
    failures: int
    p99_ms: float | None
    by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    def describe(self) -> str:
        p99 = "n/a" if self.p99_ms is None else f"{self.p99_ms:.1f} ms"
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(self.by_reason.items()) if n)
        return (f"version {self.version}: {self.requests} requests, error rate {self.error_rate:.2%}"
                f"{f' ({reasons})' if reasons else ''}, p99 {p99}")


def version_health(version: str, window: VersionCounters, settings: GuardSettings) -> VersionHealth:
    """Health of one version from its counters' difference over the window."""
    failures = window.failed(settings.ignore_reasons)
    q = window.quantile(settings.quantile)
    by_reason = {r: int(v) for r, v in window.failures.items() if r not in settings.ignore_reasons}
    return VersionHealth(version, int(window.success + failures), int(failures),
                         None if math.isnan(q) else q * 1000, by_reason)


def breaches(health: VersionHealth, settings: GuardSettings) -> list[str]:
    """The limits ``health`` breaks, in words (empty: healthy)."""
    out = []
    if health.error_rate > settings.max_error_rate:
        out.append(f"error rate {health.error_rate:.2%} ({health.failures} of {health.requests} requests) "
                   f"> max {settings.max_error_rate:.2%}")
    if health.p99_ms is not None and health.p99_ms > settings.max_p99_ms:
        out.append(f"p{settings.quantile * 100:g} latency {health.p99_ms:.1f} ms > max {settings.max_p99_ms:g} ms")
    return out


@dataclass(frozen=True, slots=True)
class GuardReport:
    """One check: ``judged`` when the canary had ``min_requests``; ``rolled_back`` when it was rolled back."""

    model: str
    canary: VersionHealth | None  # None: no canary to guard (the guard stops)
    primary: VersionHealth | None
    window_s: float
    judged: bool
    breaches: list[str]
    rollback: Outcome | None = None
    note: str = ""

    @property
    def rolled_back(self) -> bool:
        return self.rollback is not None and self.rollback.changed

    def describe(self) -> str:
        if self.canary is None:
            return f"{self.model}: {self.note}"
        if self.window_s == 0:
            return f"{self.model}: guarding canary version {self.canary.version}: {self.note}"
        lines = [f"{self.model}: canary {self.canary.describe()} over {self.window_s:.1f} s"]
        if self.primary is not None:
            lines.append(f"{self.model}: primary {self.primary.describe()}")
        if self.rolled_back:
            lines.append(f"ROLLED BACK: {'; '.join(self.breaches)} -> {self.rollback.summary}")  # type: ignore[union-attr]
        elif self.breaches:
            lines.append(f"breach: {'; '.join(self.breaches)}")
        elif not self.judged:
            lines.append(f"not judged yet: {self.note}")
        else:
            lines.append("healthy")
        return "\n".join(lines)


Fetch = Callable[[], Scrape]


class CanaryGuard:
    """Watches one model's canary through serving's metrics and rolls it back on a breach.

    ``version``: the version to guard (default: the routing's canary version, re-read at every
    check). ``fetch`` scrapes (default: :func:`~engine.rollouts.scrape.scrape` of ``urls``).
    """

    def __init__(self, root: str | Path, model: str, urls: Sequence[str], settings: GuardSettings | None = None, *,
                 version: str | None = None, actor: str = GUARD_ACTOR, fetch: Fetch | None = None) -> None:
        if not urls and fetch is None:
            raise ValueError("the guard needs at least one metrics URL")
        self.root = Path(root)
        self.model = model
        self.settings = settings or GuardSettings()
        self.version = version
        self.actor = actor
        self._fetch: Fetch = fetch or (lambda: scrape(urls, model))
        self._baseline: Scrape | None = None

    def _targets(self) -> tuple[str | None, str | None]:
        routing = read_routing(self.root, self.model)
        canary = self.version or ((routing or {}).get("canary") or {}).get("version")
        primary = serving_primary(self.model, routing, model_versions(self.root, self.model))
        return canary, primary

    def check(self) -> GuardReport:
        """Scrape, judge the window since the baseline, roll back on a breach."""
        canary, primary = self._targets()
        if canary is None:
            return GuardReport(self.model, None, None, 0.0, False, [],
                               note="no canary in the routing: nothing to guard")
        now = self._fetch()
        before = self._baseline
        if before is None:
            self._baseline = now
            return GuardReport(self.model, version_health(canary, VersionCounters(), self.settings), None, 0.0,
                               False, [], note="first scrape taken; the next one is compared with it")
        s = self.settings
        health = version_health(canary, now.get(canary).minus(before.versions.get(canary)), s)
        base = (version_health(primary, now.get(primary).minus(before.versions.get(primary)), s)
                if primary is not None and primary != canary else None)
        window = now.time - before.time
        if health.requests < s.min_requests:
            return GuardReport(self.model, health, base, window, False, [],
                               note=f"{health.requests} of {s.min_requests} requests needed")
        self._baseline = now
        found = breaches(health, s)
        outcome = None
        if found:
            reason = f"guard: canary version {canary} over {window:.1f} s: " + "; ".join(found)
            if base is not None:
                reason += f" (primary {base.describe()})"
            outcome = rollback(self.root, self.model, canary, reason=reason, actor=self.actor)
            log.warning("%s", outcome.summary + f" ({reason})")
        return GuardReport(self.model, health, base, window, True, found, outcome)

    def run(self, interval_s: float = 5.0, *, once: bool = False, max_checks: int | None = None,
            on_report: Callable[[GuardReport], None] | None = None) -> GuardReport:
        """Check every ``interval_s`` until a rollback, or until the routing has no canary.

        ``once``: take a baseline, wait one interval, judge once and return (a window with
        fewer than ``min_requests`` is reported as not judged).
        """
        checks = 0
        report = self.check()  # the baseline
        if on_report is not None:
            on_report(report)
        while True:
            if report.canary is None or report.rolled_back:
                return report
            time.sleep(interval_s)
            report = self.check()
            checks += 1
            if on_report is not None:
                on_report(report)
            if once or (max_checks is not None and checks >= max_checks):
                return report
