"""Learner specs (YAML) and the River models they build.

A learner learns continuously from joined examples of the models named in ``learn_from``
(its own served versions by default: the learner and the model it publishes share a name).

::

    learners:
      - name: ctr_online            # also the served model's name (snapshots go to <repo>/ctr_online/)
        kind: logistic_regression   # logistic_regression | fm | hoeffding_adaptive_tree | arf
        params: {l2: 0.0}           # passed to the River estimator
        scale: true                 # StandardScaler first (default: true for the linear kinds)
        features: [user.clicks_1h, user.impressions_1h, item.ctr_1h]   # default: every numeric one
        learn_from: [ranker, ctr_online]   # models whose logged predictions teach it
        variants: [primary, canary, a, b]  # default: every variant but shadow

>>> spec = LearnerSpec(name="ctr", kind="logistic_regression")
>>> [type(step).__name__ for step in build_model(spec).steps.values()]
['StandardScaler', 'LogisticRegression']
>>> LearnerSpec(name="t", kind="hoeffding_adaptive_tree").scaled
False
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from river import base as river_base

LearnerKind = Literal["logistic_regression", "fm", "hoeffding_adaptive_tree", "arf"]
_LINEAR: frozenset[str] = frozenset({"logistic_regression", "fm"})


class LearnerSpec(BaseModel):
    """One online learner (see the module docs for every key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    kind: LearnerKind
    params: dict[str, Any] = Field(default_factory=dict)
    scale: bool | None = None  # None: True for the linear kinds
    features: tuple[str, ...] | None = None
    learn_from: tuple[str, ...] = ()  # empty: (name,)
    variants: tuple[str, ...] | None = None  # None: every variant except "shadow"

    @field_validator("features")
    @classmethod
    def _unique(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("features must not repeat a name")
        return value

    @model_validator(mode="after")
    def _defaults(self) -> "LearnerSpec":
        if not self.learn_from:
            object.__setattr__(self, "learn_from", (self.name,))
        return self

    @property
    def scaled(self) -> bool:
        return self.kind in _LINEAR if self.scale is None else self.scale

    def learns_from(self, model: str, variant: str) -> bool:
        """Whether a logged prediction of ``model``/``variant`` teaches this learner."""
        if model not in self.learn_from:
            return False
        return variant != "shadow" if self.variants is None else variant in self.variants


def build_model(spec: LearnerSpec) -> river_base.Classifier:
    """A fresh River classifier for ``spec`` (unknown params fail here, at start-up)."""
    from river import compose, facto, forest, linear_model, preprocessing, tree

    params = dict(spec.params)
    estimator: Any
    if spec.kind == "logistic_regression":
        estimator = linear_model.LogisticRegression(**params)
    elif spec.kind == "fm":
        estimator = facto.FMClassifier(**{"seed": 0, **params})
    elif spec.kind == "hoeffding_adaptive_tree":
        estimator = tree.HoeffdingAdaptiveTreeClassifier(**{"seed": 0, **params})
    else:
        estimator = forest.ARFClassifier(**{"seed": 0, **params})
    if spec.scaled:
        return compose.Pipeline(preprocessing.StandardScaler(), estimator)
    return estimator


def default_learners_path() -> Path:
    """The packaged default learner specs."""
    return Path(str(resources.files("engine") / "defaults" / "learners.yaml"))


def load_learners(path: str | Path) -> list[LearnerSpec]:
    """Read and validate a learners YAML file (names must be unique)."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict) or not isinstance(data.get("learners", []), list):
        raise ValueError(f"{path}: expected a mapping with a 'learners' list")
    specs = [LearnerSpec.model_validate(item) for item in data.get("learners", [])]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: learner names must be unique, got {names}")
    for spec in specs:
        build_model(spec)  # fail at load time on bad params
    return specs
