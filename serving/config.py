"""Per-model serving configuration: the optional ``ROOT/<name>/config.yaml``.

Every field has a default, so a model directory without a config serves with
dynamic batching up to 64 rows, no queue delay and one ONNX Runtime thread, builds its
inputs from the request alone, routes nothing and caches nothing.

A complete example (see :class:`FeatureBindings` and :class:`Routing` for each key)::

    max_batch_size: 64
    max_queue_delay_us: 200
    features:                       # build model inputs from online features (Redis)
      inputs:
        input:                      # model input -> its columns, in order
          - user.clicks_1h
          - user.impressions_1h
          - item.ctr_1h
          - user_item.clicks_24h
          - request.price           # instance.features["price"]
      views:                        # optional: views not in the server's feature specs
        user: {entity: [user_id]}
      defaults: {user.clicks_1h: 0.0, request.price: 1.0}
      default: 0.0                  # every other missing / expired value
      fail_open: true               # Redis down: answer with defaults (false: UNAVAILABLE)
      max_feature_age_ms: 3600000   # older hashes count as missing
    routing:
      primary: "1"                  # default: highest READY version not used below
      shadow: {version: "3"}
      canary: {version: "2", percent: 10, key: user_id}
      # or, instead of canary:
      # ab: {variants: {control: {version: "1", weight: 50}, treatment: {version: "2", weight: 50}},
      #      sticky_key: user_id}
    cache_ttl_ms: 500
    precomputed:                    # answer from `rtml batch-predict` scores when fresh enough
      key: user_id
      max_age: 6h
      on_miss: compute              # or reject (NOT_FOUND)
      on_stale: compute             # or reject (FAILED_PRECONDITION)

>>> ModelConfig().max_batch_size
64
>>> ModelConfig.model_validate({"max_queue_delay_us": 500}).max_queue_delay_us
500
>>> for bad in ({"max_batch_size": 128, "queue_capacity": 64}, {"max_batch": 8}):
...     try:
...         ModelConfig.model_validate(bad)
...     except ValueError as exc:
...         print(exc.errors()[0]["type"])
value_error
extra_forbidden
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from engine.features.spec import parse_duration_ms

CONFIG_FILENAME = "config.yaml"

# The documented default for a missing, null or expired feature value.
DEFAULT_FEATURE_VALUE = 0.0
REQUEST_SOURCE = "request"  # ``request.<name>``: instance.features[<name>]
_VIEW_NAME = re.compile(r"[A-Za-z0-9_]+")
_FEATURE_NAME = re.compile(r"[^\s.]+")


def _version_text(value: Any) -> Any:
    # YAML reads ``version: 2`` as an int; versions are directory names, i.e. text.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


# A version as written in config.yaml (YAML may read it as an int): non-empty text.
VersionText = Annotated[str, BeforeValidator(_version_text), Field(min_length=1)]


def _duration_ms(value: Any) -> Any:
    return None if value is None else parse_duration_ms(value)


# A duration as written in a config file ("30s", "6h" or ms), held in milliseconds.
DurationMs = Annotated[int, BeforeValidator(_duration_ms)]


def parse_source(source: str) -> tuple[str, str]:
    """Split a feature source ``view.column`` / ``request.name`` into its two parts.

    >>> parse_source("user_item.clicks_1h")
    ('user_item', 'clicks_1h')
    >>> parse_source("request.price")
    ('request', 'price')
    """
    view, sep, column = source.partition(".")
    if not sep or not _VIEW_NAME.fullmatch(view) or not _FEATURE_NAME.fullmatch(column):
        raise ValueError(
            f"feature source {source!r} must be '<view>.<column>' (e.g. user.clicks_1h) or "
            "'request.<name>' (a value the request carries in instance.features)"
        )
    return view, column


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ViewBinding(_Frozen):
    """Where a view's entity key comes from, for views the server's feature specs lack.

    ``entity`` lists ``Instance.entity_ids`` fields in the view's order: one field gives the
    key as is (``u42``), several are escaped and joined with ``|`` as the features dataflow
    writes them (``u42|i7``). ``ttl`` (a duration: ``30s``, ``2d`` or ms) makes older hashes
    count as missing; without it only ``max_feature_age_ms`` limits age.
    """

    entity: tuple[str, ...] = Field(min_length=1)
    ttl: DurationMs | None = None

    @field_validator("entity", mode="before")
    @classmethod
    def _one_field(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value


class FeatureBindings(_Frozen):
    """How a model's inputs are built from online features and request values.

    ``inputs`` maps a model input to its ordered sources; the input's row for one instance is
    the sources' values in that order, so its per-instance size must equal the number of
    sources (shape ``[-1, n]``, or ``[-1]`` / ``[-1, 1]`` for one source). A source is

    * ``<view>.<column>``: the column of that view's Redis hash for the instance's entity,
      e.g. ``user.clicks_1h`` (keyed by ``entity_ids["user_id"]``) or ``user_item.clicks_1h``
      (keyed by ``user_id|item_id``). The entity fields come from the server's feature specs
      (the packaged ``engine/defaults/features.yaml`` unless configured) or ``views`` below.
      A request can override it by sending ``instance.features["user.clicks_1h"]``.
    * ``request.<name>``: ``instance.features[<name>]``, a value only the caller knows
      (a price, the hour of day). A request without it is refused (INVALID_ARGUMENT) unless
      ``defaults`` names one.

    A request may also send the whole row of a bound input in ``instance.tensors[<input>]``
    (no fetch for it). Inputs not listed here are taken from the request as without bindings.

    A fetched value that is missing (unknown entity), null (empty string), expired (older than
    the view's TTL or ``max_feature_age_ms``) or unreadable is replaced by
    ``defaults[source]``, else by ``default`` (0.0).

    ``fail_open``: when Redis cannot be reached, answer with defaults and count
    ``rtml_feature_fetch_errors_total`` (True, the default: a recommendation is better than an
    error page), or fail the request with UNAVAILABLE (False: for models whose answers are
    wrong without their features, e.g. fraud scores).
    """

    inputs: dict[str, tuple[str, ...]] = Field(min_length=1)
    views: dict[str, ViewBinding] = Field(default_factory=dict)
    defaults: dict[str, float] = Field(default_factory=dict)
    default: float = DEFAULT_FEATURE_VALUE
    fail_open: bool = True
    max_feature_age_ms: int | None = Field(None, gt=0)

    @field_validator("inputs")
    @classmethod
    def _sources_parse(cls, inputs: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        for name, sources in inputs.items():
            if not sources:
                raise ValueError(f"input {name!r} has no sources")
            for source in sources:
                parse_source(source)
            if len(set(sources)) != len(sources):
                raise ValueError(f"input {name!r} lists a source twice")
        return inputs

    @model_validator(mode="after")
    def _references_exist(self) -> "FeatureBindings":
        sources = {s for group in self.inputs.values() for s in group}
        unknown = sorted(set(self.defaults) - sources)
        if unknown:
            raise ValueError(f"defaults for source(s) not bound to any input: {', '.join(unknown)}")
        if REQUEST_SOURCE in self.views:
            raise ValueError(f"'{REQUEST_SOURCE}' is reserved for request values and cannot name a view")
        return self

    def sources(self) -> list[str]:
        """Every bound source once, in input then binding order."""
        return list(dict.fromkeys(s for group in self.inputs.values() for s in group))


class ShadowRoute(_Frozen):
    """Score every routed request with ``version`` too, off the response path."""

    version: VersionText


class CanaryRoute(_Frozen):
    """Send ``percent`` % of entities (by a stable hash of ``entity_ids[key]``) to ``version``."""

    version: VersionText
    percent: float = Field(ge=0, le=100)
    key: str = "user_id"


class AbVariant(_Frozen):
    """One arm of an A/B test: its version and relative weight."""

    version: VersionText
    weight: float = Field(gt=0)


class AbRoute(_Frozen):
    """Split entities between named variants by weight, sticky by ``entity_ids[sticky_key]``."""

    variants: dict[str, AbVariant] = Field(min_length=1)
    sticky_key: str = "user_id"

    @field_validator("variants")
    @classmethod
    def _names(cls, variants: dict[str, AbVariant]) -> dict[str, AbVariant]:
        for name in variants:
            if not name or name == "shadow":
                raise ValueError(f"variant name {name!r} is empty or reserved ('shadow')")
        return variants


class Routing(_Frozen):
    """Which version serves a request that does not name one.

    A request that names a version gets exactly that version: no canary / A/B split, no shadow.

    ``primary`` serves what no canary / A/B arm takes (default: the highest READY version that
    is not the canary or shadow version). ``canary`` and ``ab`` exclude each other; ``shadow``
    combines with either. Variants in responses and the predictions log: ``primary``,
    ``canary``, the A/B arm's name, ``shadow``.
    """

    primary: Annotated[str | None, BeforeValidator(_version_text)] = None
    shadow: ShadowRoute | None = None
    canary: CanaryRoute | None = None
    ab: AbRoute | None = None

    @model_validator(mode="after")
    def _one_split(self) -> "Routing":
        if self.canary is not None and self.ab is not None:
            raise ValueError("routing: canary and ab cannot both be set (use ab with two variants)")
        if self.shadow is None and self.canary is None and self.ab is None and self.primary is None:
            raise ValueError("routing: set at least one of primary, shadow, canary, ab")
        return self


PrecomputedPolicy = Literal["compute", "reject"]


class PrecomputedScores(_Frozen):
    """Serve scores that ``rtml batch-predict`` computed offline, by lookup (docs/batch.md).

    An instance whose ``entity_ids[key]`` is set and that carries no ``features`` or
    ``tensors`` of its own is answered from the scores of the served version's current batch
    run, when one exists for that id (*hit*) and is at most ``max_age`` old (a duration:
    ``30m``, ``6h`` or ms; None: any age). ``on_miss`` (no score for the id, or the instance
    cannot be looked up) and ``on_stale`` (older than ``max_age``) choose what happens
    otherwise: ``compute`` runs the model online as without this section, ``reject`` fails
    the request with NOT_FOUND (miss) or FAILED_PRECONDITION (stale).

    >>> PrecomputedScores.model_validate({"max_age": "6h", "on_stale": "reject"}).max_age_ms
    21600000
    """

    key: str = Field("user_id", min_length=1)
    max_age_ms: DurationMs | None = Field(None, alias="max_age")
    on_miss: PrecomputedPolicy = "compute"
    on_stale: PrecomputedPolicy = "compute"

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)



class ModelConfig(BaseModel):
    """How one model (all of its versions) is served.

    ``max_batch_size`` counts rows along the batch axis (dim 0). ``0`` means the model has
    no batch axis: each request runs alone and its shapes must match the model exactly.
    When the model's graph has no dynamic first dimension and the config leaves
    ``max_batch_size`` at its default, the server serves it with ``max_batch_size = 0``;
    an explicit positive value for such a model is refused at load time.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_size: int = Field(64, ge=0)
    # Triton's policy: the batcher never waits while a batch is full or the runner is busy;
    # it waits at most this long (counted from the oldest queued request's arrival) only to
    # top up a partial batch. 0 = dispatch whatever is queued as soon as the runner is free.
    max_queue_delay_us: int = Field(0, ge=0)
    # Counted in rows, so that one 64-row request weighs as much as 64 single-row ones.
    queue_capacity: int = Field(1024, ge=1)
    intra_op_threads: int = Field(1, ge=1)
    # Opt-in: a version whose batches compute faster than this on average (moving average)
    # runs them on the event loop itself, because for a small model the hand-off to the
    # inference thread and back costs more CPU than the inference. 0 (the default) keeps
    # inference off the event loop always.
    inline_compute_us: int = Field(0, ge=0)
    warmup: bool = True
    # rtml.v1 Predict only (KServe ModelInfer takes tensors as sent and never routes).
    features: FeatureBindings | None = None
    routing: Routing | None = None
    # Repeated identical Predict requests (same model, version, variant, instances, outputs)
    # are answered from memory for this long; 0 disables. Features fetched for the cached
    # answer can therefore be up to this old.
    cache_ttl_ms: int = Field(0, ge=0)
    # Scores precomputed by `rtml batch-predict`, served by lookup (docs/batch.md).
    precomputed: PrecomputedScores | None = None

    @model_validator(mode="after")
    def _precomputed_needs_bindings(self) -> "ModelConfig":
        # Batch prediction builds each user's inputs from the bindings; without them there is
        # nothing to compute from a user id (and nothing to fall back to online either).
        if self.precomputed is not None and self.features is None:
            raise ValueError(
                "precomputed scores need feature bindings (a 'features' section): batch prediction "
                "builds each entity's inputs from them"
            )
        return self

    @model_validator(mode="after")
    def _queue_holds_a_batch(self) -> "ModelConfig":
        # Otherwise a maximal request could never be admitted and would always be refused
        # as "overloaded", which would be a configuration error reported as load shedding.
        if self.queue_capacity < self.max_batch_size:
            raise ValueError(
                f"queue_capacity ({self.queue_capacity}) must be at least max_batch_size ({self.max_batch_size})"
            )
        return self


M = TypeVar("M", bound=BaseModel)


def load_yaml_config(path: str | Path, model: type[M], what: str, *, empty_is_default: bool = False) -> M:
    """Read a YAML file into ``model``; ``ValueError`` naming the file and every problem.

    ``what`` names the file in messages ("model config"). One line per problem, without
    pydantic's documentation links: this ends up in log lines and in FAILED reasons.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read {what}: {' '.join(str(exc).split())}") from exc
    if raw is None and empty_is_default:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: {what} must be a mapping, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}" for err in exc.errors()
        )
        raise ValueError(f"{path}: invalid {what}: {details}") from exc


def load_model_config(path: str | Path) -> ModelConfig:
    """Read a ``config.yaml``; an empty file means all defaults.

    Raises ``ValueError`` (pydantic's ``ValidationError`` is one) with the file name in the
    message when the YAML is unreadable or a field is unknown or out of range.
    """
    return load_yaml_config(path, ModelConfig, "model config", empty_is_default=True)
