"""Bandit specs: which bandits exist, their policy, arms and hyper-parameters (a YAML file).

The file named by ``learning.bandits`` in the rtml config (``rtml serve --bandits FILE``)
lists the bandits that serving decides with (``Choose``) and the learning dataflow rewards::

    bandits:
      - name: home-banner            # Redis key <prefix>:bandit:home-banner, record "model"
        policy: thompson             # thompson | ucb1 | epsilon_greedy | linucb
        arms: [hero, sale, new-in]
        params: {prior_alpha: 1.0, prior_beta: 1.0}
        refresh_s: 1.0               # serving reloads its snapshot at most this often
      - name: ranker-slot
        policy: linucb
        arms: [a, b, c]
        context_dim: 8               # linucb only: the length of every context vector
        params: {alpha: 1.0}
      - name: rec-explore            # Recommend's exploration slots (docs/recommend.md)
        policy: thompson
        dynamic_arms: true           # arms are item ids, posteriors created on first reward

``params`` are the policy's constructor arguments: ``prior_alpha``/``prior_beta``
(thompson), ``c`` (ucb1), ``epsilon`` (epsilon_greedy), ``alpha``/``l2_lambda`` (linucb).
The stored state must match the spec (policy, arms, params): changing any of them needs a
new bandit name (or deleting the old hash), see :class:`engine.bandits.store.RedisBandit`.
``dynamic_arms: true`` (Thompson only, no ``arms`` list) makes a bandit whose arms are items
that come and go (:class:`engine.bandits.dynamic.DynamicThompson`): Recommend's exploration
slots choose among the candidates of a request, and the learning dataflow rewards them like
any other bandit. ``Choose`` does not serve such a bandit (it has no fixed arm list).

>>> specs = parse_bandit_specs('''
... bandits:
...   - {name: banner, policy: epsilon_greedy, arms: [a, b], params: {epsilon: 0.1}}
...   - {name: slot, policy: linucb, arms: [x, y], context_dim: 3}
... ''')
>>> [(s.name, s.policy, s.policy_params()) for s in specs]
[('banner', 'epsilon_greedy', {'epsilon': 0.1}), ('slot', 'linucb', {'n_features': 3})]
>>> parse_bandit_specs("bandits: [{name: b, policy: ucb1, arms: [a, a]}]")
Traceback (most recent call last):
...
engine.bandits.spec.BanditSpecError: invalid bandit specs: bandits.0.arms: duplicate arms: ['a']
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from engine.bandits.policies import POLICIES, RngLike, make_policy

__all__ = ["BanditSpec", "BanditSpecError", "RESERVED_NAMES", "load_bandit_specs", "parse_bandit_specs"]

PolicyKind = Literal["thompson", "ucb1", "epsilon_greedy", "linucb"]

# Keys that BanditRewarder.apply returns next to bandit names; no bandit may be called so.
RESERVED_NAMES = frozenset({"no_arm", "unknown_bandit", "invalid", "error"})

# Constructor arguments a spec never sets through ``params``.
_NOT_PARAMS = frozenset({"self", "arms", "rng", "n_features"})


class BanditSpecError(ValueError):
    """A bandit specs file that cannot be read or does not validate (one line per problem)."""


def _allowed_params(policy: str) -> list[str]:
    """Keyword arguments of the policy's constructor that ``params`` may set."""
    return [p for p in inspect.signature(POLICIES[policy].__init__).parameters if p not in _NOT_PARAMS]


class BanditSpec(BaseModel):
    """One bandit: ``name``, ``policy``, ``arms``, ``params``, ``context_dim``, ``refresh_s``,
    ``dynamic_arms``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Goes into a Redis key and every decision record's "model": no spaces or colons.
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", max_length=200)
    policy: PolicyKind
    # Arms are items added as they are chosen (thompson only); ``arms`` must then be empty.
    dynamic_arms: bool = False
    arms: list[StrictStr] = Field(default_factory=list, validate_default=True)
    params: dict[str, float] = Field(default_factory=dict)
    context_dim: int | None = Field(None, ge=1)
    # How stale serving's snapshot of the state may get; 0 reads Redis before every decision.
    refresh_s: float = Field(1.0, ge=0)

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name in RESERVED_NAMES:
            raise ValueError(f"{name!r} is reserved (a BanditRewarder count); pick another name")
        return name

    @field_validator("arms")
    @classmethod
    def _distinct_arms(cls, arms: list[str], info: ValidationInfo) -> list[str]:
        if info.data.get("dynamic_arms"):
            if arms:
                raise ValueError("a bandit with dynamic_arms takes no arms list (its arms are added as chosen)")
            return arms
        if not arms:
            raise PydanticCustomError("too_short", "List should have at least 1 item")
        if any(not arm for arm in arms):
            raise ValueError("arms must be non-empty strings")
        duplicates = sorted({arm for arm in arms if arms.count(arm) > 1})
        if duplicates:
            raise ValueError(f"duplicate arms: {duplicates}")
        return arms

    @model_validator(mode="after")
    def _policy_fits(self) -> "BanditSpec":
        if self.policy == "linucb" and self.context_dim is None:
            raise ValueError("policy linucb needs context_dim (the length of its context vectors)")
        if self.policy != "linucb" and self.context_dim is not None:
            raise ValueError(f"context_dim is for linucb only; policy {self.policy} takes no context")
        if self.dynamic_arms and self.policy != "thompson":
            raise ValueError(f"dynamic_arms works with policy thompson only, not {self.policy}")
        allowed = _allowed_params(self.policy)
        unknown = sorted(set(self.params) - set(allowed))
        if unknown:
            raise ValueError(f"unknown params {unknown} for policy {self.policy}; allowed: {allowed}")
        try:  # the policy's own checks (ranges such as 0 <= epsilon <= 1)
            # A dynamic bandit's params are checked on a stand-in arm list.
            make_policy(self.policy, self.arms or ["_"], **self.policy_params())
        except ValueError as exc:
            raise ValueError(f"params do not fit policy {self.policy}: {exc}") from None
        return self

    @property
    def contextual(self) -> bool:
        """Whether decisions need a context vector (of ``context_dim`` values)."""
        return self.context_dim is not None

    def policy_params(self) -> dict[str, Any]:
        """Keyword arguments for :func:`~engine.bandits.policies.make_policy` (and ``RedisBandit``)."""
        params: dict[str, Any] = dict(self.params)
        if self.context_dim is not None:
            params["n_features"] = self.context_dim
        return params

    def redis_bandit(self, client: Any, *, prefix: str = "rtml", rng: RngLike = None) -> Any:
        """The :class:`~engine.bandits.store.RedisBandit` for this spec (creates its hash if absent);
        a :class:`~engine.bandits.dynamic.DynamicThompson` for a ``dynamic_arms`` spec.

        Raises ``ValueError`` when Redis already holds a bandit of this name with another
        policy, arms or params, and redis-py's errors when Redis cannot be reached.
        """
        from engine.bandits.store import RedisBandit

        if self.dynamic_arms:
            from engine.bandits.dynamic import DynamicThompson

            return DynamicThompson(client, self.name, prefix=prefix, rng=rng, **self.policy_params())

        return RedisBandit(
            client, self.name, self.policy, self.arms, prefix=prefix, rng=rng, refresh_s=self.refresh_s,
            **self.policy_params(),
        )


class _SpecFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bandits: list[BanditSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> "_SpecFile":
        names = [b.name for b in self.bandits]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate bandit names: {duplicates}")
        return self


def _validate(data: Any, where: str) -> list[BanditSpec]:
    if data is None:
        return []
    if not isinstance(data, Mapping):
        raise BanditSpecError(f"{where}: expected a mapping with a 'bandits' list, got {type(data).__name__}")
    try:
        return list(_SpecFile.model_validate(data).bandits)
    except ValidationError as exc:
        # One line per problem, without pydantic's documentation links (this ends up in logs).
        details = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'file'}: {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        )
        raise BanditSpecError(f"{where}: {details}") from None


def parse_bandit_specs(source: str | Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[BanditSpec]:
    """Specs from YAML text, a ``{"bandits": [...]}`` mapping or a list of bandit mappings.

    Raises :class:`BanditSpecError` naming every problem.
    """
    if isinstance(source, str):
        try:
            data = yaml.safe_load(source)
        except yaml.YAMLError as exc:
            raise BanditSpecError(f"bandit specs are not valid YAML: {' '.join(str(exc).split())}") from None
    elif isinstance(source, Mapping):
        data = source
    else:
        data = {"bandits": list(source)}
    return _validate(data, "invalid bandit specs")


def load_bandit_specs(path: str | Path) -> list[BanditSpec]:
    """Read and validate a bandit specs YAML file; an empty file means no bandits.

    Raises :class:`BanditSpecError` with the file name and every problem in the message.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise BanditSpecError(f"{path}: cannot read bandit specs: {' '.join(str(exc).split())}") from None
    return _validate(data, f"{path}: invalid bandit specs")
