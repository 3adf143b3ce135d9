"""The A/B verdict: per-variant CTR, each treatment tested against the control, in plain words.

The control is the arm named ``control`` (an A/B test), else ``primary`` (a canary: the
canary is the treatment), else the one given. Each other arm is a treatment; with more than
one, each comparison runs at ``alpha / treatments`` (Bonferroni) so that the chance of any
false "ship it" stays at ``alpha``.

Verdicts, per treatment:

* fewer than ``min_samples`` impressions in either arm, or no click in the control:
  "not enough data yet";
* significant and up: "... raises CTR by 4.1% (95% CI 1.2% - 7.0%, p = 0.004): ship it";
* significant and down: "... lowers CTR by ...: do not ship it (roll it back)";
* otherwise (fixed horizon): "no detectable difference after N impressions per arm", with
  how many more impressions per arm the test needs for 80% power at a ``mde`` relative lift;
  (sequential): "no difference detected yet ...: keep the test running".

>>> from engine.rollouts.outcomes import ArmCounts
>>> arms = {"control": ArmCounts("control", 20_000, 2_000, ["1"]),
...         "treatment": ArmCounts("treatment", 20_000, 2_200, ["2"])}
>>> print(ab_verdict("ctr", arms).comparisons[0].text)
treatment (v2) raises CTR by 10.0% (95% CI 3.9% – 16.5%, p = 0.0011) against control (v1): ship it
>>> arms["treatment"] = ArmCounts("treatment", 20_000, 2_010, ["2"])
>>> print(ab_verdict("ctr", arms).comparisons[0].text)
no detectable difference between treatment (v2) and control (v1) after 20,000 impressions per arm (CTR 10.05% vs 10.00%, p = 0.87); needs ~337,000 more per arm to detect a 2% lift at 80% power
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from engine.rollouts.outcomes import ArmCounts
from engine.rollouts.stats import ProportionTest, msprt, sample_size_per_arm, two_proportion_ztest, wilson_interval


@dataclass(frozen=True, slots=True)
class ArmReport:
    """One arm's CTR with its Wilson interval."""

    variant: str
    versions: list[str]
    impressions: int
    clicks: int
    ctr: float
    ctr_ci: tuple[float, float]


@dataclass(frozen=True, slots=True)
class Comparison:
    """One treatment against the control; ``decision``: ship, reject, no_difference, keep_running, not_enough_data."""

    treatment: str
    control: str
    decision: str
    text: str
    test: ProportionTest | None = None
    needed_per_arm: int | None = None  # fixed horizon, no difference: impressions per arm for the mde


@dataclass(frozen=True, slots=True)
class Verdict:
    """Everything ``rtml rollout verdict`` reports."""

    model: str
    arms: list[ArmReport]
    comparisons: list[Comparison]
    sequential: bool
    alpha: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        method = ("sequential (mSPRT, always-valid p)" if self.sequential
                  else "fixed horizon (pooled two-proportion z-test)")
        header = f"{'variant':<12} {'versions':<10} {'impressions':>12} {'clicks':>9} {'CTR':>8}  95% CI"
        lines = [f"model {self.model}: A/B verdict, {method}, alpha {self.alpha:g}", header]
        for a in self.arms:
            lines.append(f"{a.variant:<12} {','.join(a.versions):<10} {a.impressions:>12,} {a.clicks:>9,} "
                         f"{a.ctr:>8.2%}  {a.ctr_ci[0]:.2%} – {a.ctr_ci[1]:.2%}")
        lines += [f"verdict: {c.text}" for c in self.comparisons]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def pick_control(variants: list[str], control: str | None = None) -> str | None:
    """``control`` if given, else the arm named ``control``, else ``primary``, else None."""
    if control is not None:
        return control if control in variants else None
    for name in ("control", "primary"):
        if name in variants:
            return name
    return None


def _arm_label(arm: ArmCounts) -> str:
    return f"{arm.variant} (v{', v'.join(arm.versions)})" if arm.versions else arm.variant


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _p(p: float) -> str:
    return f"= {p:.2g}" if p >= 0.001 else "< 0.001"


def _round_up(n: int) -> int:
    """Round an impression count up to a readable figure (3 significant digits)."""
    if n < 1000:
        return n
    step = 10 ** (len(str(n)) - 3)
    return -(-n // step) * step


def compare(control: ArmCounts, treatment: ArmCounts, *, alpha: float = 0.05, sequential: bool = False,
            min_samples: int = 1000, mde: float = 0.02, power: float = 0.8,
            mixture_lift: float = 0.05) -> Comparison:
    """Test ``treatment`` against ``control`` and put the result in words."""
    t, c = _arm_label(treatment), _arm_label(control)
    n = min(control.impressions, treatment.impressions)
    if n < min_samples or control.clicks == 0:
        why = (f"{n:,} impressions in the smaller arm, {min_samples:,} needed" if n < min_samples
               else "no clicks in the control yet")
        return Comparison(treatment.variant, control.variant, "not_enough_data",
                          f"not enough data yet for {t} against {c} ({why})")
    args = (control.clicks, control.impressions, treatment.clicks, treatment.impressions)
    test = msprt(*args, alpha=alpha, mixture_lift=mixture_lift) if sequential else two_proportion_ztest(*args, alpha=alpha)
    level = f"{1 - alpha:.0%}".rstrip("%") + "%"
    p_name = "always-valid p" if sequential else "p"
    if test.significant and test.lift is not None:
        up = test.diff > 0
        lo, hi = test.lift_ci if test.lift_ci else (test.lift, test.lift)
        # A drop is reported as a positive size, so its interval flips.
        size, lo, hi = (test.lift, lo, hi) if up else (-test.lift, -hi, -lo)
        stats = f"{level} CI {_pct(lo)} – {_pct(hi)}, {p_name} {_p(test.p_value)}"
        if up:
            text = f"{t} raises CTR by {_pct(size)} ({stats}) against {c}: ship it"
            return Comparison(treatment.variant, control.variant, "ship", text, test)
        text = f"{t} lowers CTR by {_pct(size)} ({stats}) against {c}: do not ship it (roll it back)"
        return Comparison(treatment.variant, control.variant, "reject", text, test)
    rates = f"CTR {treatment.ctr:.2%} vs {control.ctr:.2%}, {p_name} {_p(test.p_value)}"
    if sequential:
        text = (f"no difference detected yet between {t} and {c} after {n:,} impressions per arm ({rates}): "
                "keep the test running (the sequential test may be checked as often as you like)")
        return Comparison(treatment.variant, control.variant, "keep_running", text, test)
    needed = sample_size_per_arm(control.ctr, mde, alpha, power) if 0 < control.ctr < 1 / (1 + mde) else None
    if needed is not None and needed > n:
        more = f"; needs ~{_round_up(needed - n):,} more per arm to detect a {mde:.0%} lift at {power:.0%} power"
    else:
        more = f"; the test had {power:.0%} power for a {mde:.0%} lift, so any effect is likely smaller"
    text = f"no detectable difference between {t} and {c} after {n:,} impressions per arm ({rates}){more}"
    return Comparison(treatment.variant, control.variant, "no_difference", text, test, needed)


def ab_verdict(model: str, arms: Mapping[str, ArmCounts], *, control: str | None = None, alpha: float = 0.05,
               sequential: bool = False, min_samples: int = 1000, mde: float = 0.02, power: float = 0.8,
               mixture_lift: float = 0.05) -> Verdict:
    """Report every arm and compare each treatment with the control (see the module docstring)."""
    reports = [ArmReport(a.variant, list(a.versions), a.impressions, a.clicks, a.ctr,
                         wilson_interval(a.clicks, a.impressions)) for a in arms.values()]
    notes: list[str] = []
    base = pick_control(list(arms), control)
    if base is None:
        wanted = f"arm {control!r}" if control else "arm named 'control' or 'primary'"
        notes.append(f"no {wanted} among the arms ({', '.join(arms) or 'none'}): nothing to compare (use --control)")
        return Verdict(model, reports, [], sequential, alpha, notes)
    treatments = [a for name, a in arms.items() if name != base]
    if not treatments:
        notes.append(f"only the control arm {base!r} has data: nothing to compare")
    each = alpha / max(len(treatments), 1)
    if len(treatments) > 1:
        notes.append(f"{len(treatments)} treatments: each is tested at alpha {each:.3g} (Bonferroni)")
    comparisons = [compare(arms[base], t, alpha=each, sequential=sequential, min_samples=min_samples, mde=mde,
                           power=power, mixture_lift=mixture_lift) for t in treatments]
    return Verdict(model, reports, comparisons, sequential, alpha, notes)
