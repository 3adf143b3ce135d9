"""Routing edits: shadow, canary, A/B, promote, rollback, by rewriting ``ROOT/<model>/config.yaml``.

Serving reads a model's ``routing`` from its ``config.yaml`` (:class:`serving.config.Routing`)
and rescans the repository every ``--poll-interval`` seconds (2 s by default): an edited
config reloads every version of the model in the background, the old loads keep answering
until the new ones are READY, so a routing change takes effect within a scan plus a load,
without a restart and without failing requests.

Every edit here

* reads ``config.yaml`` (absent = all defaults) and changes only its ``routing`` key: every
  other key is kept as it was (YAML comments and key formatting are not: the file is
  rewritten by ``yaml.safe_dump``);
* validates the whole result with :class:`serving.config.ModelConfig` before writing;
* refuses to route to a version that is not in the repository (a version directory with
  ``model.onnx``, or a River snapshot);
* writes atomically (temporary file, fsync, rename, fsync of the directory), under a lock
  so that two editors (an operator and ``rtml rollout guard``) do not lose each other's change;
* appends the change to ``ROOT/<model>/rollouts.jsonl`` (:mod:`engine.rollouts.history`).

An edit that would change nothing is not written; its :class:`Outcome` has ``changed=False``.

>>> import pathlib, tempfile
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> for v in ("1", "2"):
...     (root / "ranker" / v).mkdir(parents=True)
...     _ = (root / "ranker" / v / "model.onnx").write_bytes(b"onnx")
>>> print(start_shadow(root, "ranker", "2", reason="retrained", actor="doc").summary)
ranker: version 2 now shadows every routed request; the primary is pinned to version 1
>>> print(start_canary(root, "ranker", "2", 10, actor="doc").summary)
ranker: canary version 2 takes 10% of entities (by user_id); no longer the shadow
>>> print(promote(root, "ranker", "2", actor="doc").summary)
ranker: version 2 is the primary (was 1); canary version 2 ended
>>> print(rollback(root, "ranker", actor="doc").summary)
ranker: routing restored to before change 3 (promote 2): primary 1; canary 2 at 10% of user_id
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import os
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import yaml
from pydantic import ValidationError

from engine.registry.publish import check_model_name, fsync_dir, write_synced
from engine.registry.registry import ModelRegistry
from engine.rollouts.history import (
    HISTORY_FILENAME,
    RolloutChange,
    RoutingDict,
    append_change,
    last_undoable,
    read_history,
)
from serving.config import CONFIG_FILENAME, ModelConfig, Routing
from serving.repository import version_key
from serving.routing import Router

LOCK_FILENAME = ".rollouts.lock"  # a dot-file: the repository scanner ignores it


class RolloutError(ValueError):
    """A rollout command that cannot be carried out (the message says why, in words)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What an action did: ``change`` is None when nothing changed (``summary`` says why)."""

    model: str
    summary: str
    change: RolloutChange | None

    @property
    def changed(self) -> bool:
        return self.change is not None


@dataclass(frozen=True, slots=True)
class RolloutStatus:
    """A model's routing now, its versions on disk, and its recent rollout history."""

    model: str
    routing: RoutingDict | None
    versions: list[str]
    serving_primary: str | None
    history: list[RolloutChange]

    def describe(self) -> str:
        lines = [
            f"model {self.model}: versions on disk {', '.join(self.versions) or 'none'}",
            f"routing: {describe_routing(self.routing)}",
            f"primary now: {_v(self.serving_primary)}",
        ]
        if self.history:
            lines.append("recent changes:")
            for c in self.history:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(c.time_ms / 1000))
                why = f" ({c.reason})" if c.reason else ""
                lines.append(f"  #{c.seq} {when}Z {c.actor}: {c.summary}{why}")
        else:
            lines.append("no rollout history")
        return "\n".join(lines)


def _v(version: str | None) -> str:
    return "none" if version is None else version


def describe_routing(routing: RoutingDict | None) -> str:
    """A routing mapping in words.

    >>> describe_routing({"primary": "1", "canary": {"version": "2", "percent": 5, "key": "user_id"}})
    'primary 1; canary 2 at 5% of user_id'
    >>> describe_routing(None)
    'none (the highest READY version serves)'
    """
    if not routing:
        return "none (the highest READY version serves)"
    parts = [f"primary {routing['primary']}" if routing.get("primary") else "primary: highest READY version not routed"]
    if routing.get("canary"):
        c = routing["canary"]
        parts.append(f"canary {c['version']} at {c['percent']:g}% of {c.get('key', 'user_id')}")
    if routing.get("ab"):
        parts.append(_describe_ab(routing["ab"]))
    if routing.get("shadow"):
        parts.append(f"shadow {routing['shadow']['version']}")
    return "; ".join(parts)


def _describe_ab(ab: RoutingDict) -> str:
    arms = ", ".join(f"{n}={a['version']} (weight {a['weight']:g})" for n, a in ab["variants"].items())
    return f"A/B {arms} by {ab.get('sticky_key', 'user_id')}"


def routing_versions(routing: RoutingDict | None) -> set[str]:
    """Every version a routing mapping names."""
    if not routing:
        return set()
    out = {routing["primary"]} if routing.get("primary") else set()
    for kind in ("shadow", "canary"):
        if routing.get(kind):
            out.add(routing[kind]["version"])
    if routing.get("ab"):
        out.update(a["version"] for a in routing["ab"]["variants"].values())
    return out


def _normalise(routing: RoutingDict | None) -> RoutingDict | None:
    """Validated and in canonical form (versions as text, defaults filled in), or None."""
    if not routing:
        return None
    return Routing.model_validate(routing).model_dump(mode="json", exclude_none=True)


def serving_primary(model: str, routing: RoutingDict | None, versions: Sequence[str]) -> str | None:
    """The version serving's primary resolves to, with every version in ``versions`` READY.

    >>> serving_primary("m", {"canary": {"version": "3", "percent": 5}}, ["1", "2", "3"])
    '2'
    >>> serving_primary("m", None, ["1", "2"])
    '2'
    """
    ordered = sorted(versions, key=version_key)
    if not routing:
        return ordered[-1] if ordered else None
    return Router(model, Routing.model_validate(routing)).pick_primary(ordered)


def default_actor() -> str:
    """``user@host`` of this process."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


# -- the edit machinery ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Context:
    model: str
    versions: list[str]  # on disk, ascending
    routing: RoutingDict | None  # current, normalised
    history: list[RolloutChange]

    def require(self, version: str) -> str:
        version = str(version)
        if version not in self.versions:
            raise RolloutError(
                f"model {self.model!r} has no version {version!r} in the repository "
                f"(versions: {', '.join(self.versions) or 'none'}); a version is a directory with "
                "model.onnx or a River snapshot"
            )
        return version

    def primary_without(self, version: str | None) -> str | None:
        """The primary serving now, as if ``version`` were not there (it must not become the default)."""
        if self.routing and self.routing.get("primary"):
            return self.routing["primary"]
        return serving_primary(self.model, self.routing, [v for v in self.versions if v != version])


# An edit: (context) -> (new routing, words for what changed), or raise RolloutError.
_Edit = Callable[[_Context], tuple[RoutingDict | None, str]]


@contextlib.contextmanager
def _locked(model_dir: Path) -> Iterator[None]:
    with open(model_dir / LOCK_FILENAME, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_raw(config_path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, yaml.YAMLError) as exc:
        raise RolloutError(f"{config_path}: cannot read: {' '.join(str(exc).split())}") from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise RolloutError(f"{config_path}: a model config must be a mapping, got {type(raw).__name__}")
    return raw


def _write_config(model_dir: Path, raw: dict[str, Any]) -> None:
    tmp = model_dir / f".{CONFIG_FILENAME}.tmp-{secrets.token_hex(4)}"
    write_synced(tmp, yaml.safe_dump(raw, sort_keys=False).encode())
    try:
        os.replace(tmp, model_dir / CONFIG_FILENAME)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(model_dir)


def _model_dir(root: str | Path, model: str) -> Path:
    model_dir = Path(root) / check_model_name(model)
    if not model_dir.is_dir():
        raise RolloutError(f"no model {model!r} in repository {root}")
    return model_dir


def _apply(root: str | Path, model: str, action: str, version: str | None, edit: _Edit, *,
           reason: str, actor: str | None, undoes: int | None = None,
           resolve_undo: Callable[[list[RolloutChange]], int] | None = None) -> Outcome:
    model_dir = _model_dir(root, model)
    with _locked(model_dir):
        raw = _read_raw(model_dir / CONFIG_FILENAME)
        try:
            current = _normalise(raw.get("routing"))
        except ValidationError as exc:
            raise RolloutError(f"{model_dir / CONFIG_FILENAME}: the current routing is invalid: {exc}") from exc
        history_path = model_dir / HISTORY_FILENAME
        history = read_history(history_path)
        ctx = _Context(model, ModelRegistry(root).versions(model), current, history)
        if resolve_undo is not None:
            undoes = resolve_undo(history)
        after, words = edit(ctx)
        try:
            after = _normalise(after)
        except ValidationError as exc:
            raise RolloutError(f"model {model!r}: the new routing is invalid: {_errors(exc)}") from exc
        if after == current:
            return Outcome(model, f"{model}: nothing to change ({words}); routing: {describe_routing(current)}", None)
        missing = sorted(routing_versions(after) - routing_versions(current) - set(ctx.versions), key=version_key)
        if missing:
            raise RolloutError(f"model {model!r}: version(s) {', '.join(missing)} are not in the repository "
                               f"(versions: {', '.join(ctx.versions) or 'none'})")
        new_raw = dict(raw)
        if after is None:
            new_raw.pop("routing", None)
        else:
            new_raw["routing"] = after
        try:
            ModelConfig.model_validate(new_raw)
        except ValidationError as exc:
            raise RolloutError(f"{model_dir / CONFIG_FILENAME}: the edited config is invalid: {_errors(exc)}") from exc
        _write_config(model_dir, new_raw)
        summary = f"{model}: {words}"
        change = RolloutChange(
            seq=(history[-1].seq + 1) if history else 1,
            time_ms=int(time.time() * 1000),
            model=model, action=action, version=version, before=current, after=after,
            reason=reason, actor=actor or default_actor(), summary=summary, undoes=undoes,
        )
        append_change(history_path, change)
        return Outcome(model, summary, change)


def _errors(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors())


def _pin(ctx: _Context, routing: RoutingDict, version: str) -> str:
    """Pin the primary to what serves now (unless pinned), so ``version`` does not become the default."""
    if routing.get("primary"):
        return ""
    primary = ctx.primary_without(version)
    if primary is None or primary == version:
        raise RolloutError(f"model {ctx.model!r}: no version other than {version} to serve as the primary")
    routing["primary"] = primary
    return f"; the primary is pinned to version {primary}"


# -- the actions -------------------------------------------------------------------------------


def start_shadow(root: str | Path, model: str, version: str, *, reason: str = "", actor: str | None = None) -> Outcome:
    """Score every routed request with ``version`` too, off the response path (add or replace the shadow).

    The primary is pinned to the version serving now if no primary is pinned, so that a
    newly registered (highest) version does not become the default.
    """
    def edit(ctx: _Context) -> tuple[RoutingDict | None, str]:
        v = ctx.require(version)
        routing = dict(ctx.routing or {})
        if ctx.primary_without(v) == v:
            raise RolloutError(f"version {v} is the primary of {model!r}: it cannot also be its shadow")
        if (routing.get("canary") or {}).get("version") == v or v in _ab_versions(routing):
            raise RolloutError(f"version {v} already serves live traffic of {model!r} (canary or A/B)")
        old = (routing.get("shadow") or {}).get("version")
        routing["shadow"] = {"version": v}
        pinned = _pin(ctx, routing, v)
        replaced = f" (replaces shadow version {old})" if old and old != v else ""
        return routing, f"version {v} now shadows every routed request{replaced}{pinned}"

    return _apply(root, model, "shadow", str(version), edit, reason=reason, actor=actor)


def start_canary(root: str | Path, model: str, version: str, percent: float, *, key: str | None = None,
                 reason: str = "", actor: str | None = None) -> Outcome:
    """Send ``percent`` % of entities (hashed ``entity_ids[key]``, default ``user_id``) to ``version``.

    Raising the percentage of a running canary only adds entities to it (the split is a
    stable hash). Refused while an A/B test runs (serving allows one split at a time).
    """
    def edit(ctx: _Context) -> tuple[RoutingDict | None, str]:
        v = ctx.require(version)
        routing = dict(ctx.routing or {})
        if routing.get("ab"):
            raise RolloutError(f"an A/B test is running on {model!r} ({describe_routing(routing)}): "
                               "promote or roll it back before starting a canary")
        if ctx.primary_without(v) == v:
            raise RolloutError(f"version {v} is the primary of {model!r}: a canary must be another version")
        old = routing.get("canary")
        canary_key = key or (old or {}).get("key") or "user_id"
        routing["canary"] = {"version": v, "percent": float(percent), "key": canary_key}
        notes = ""
        if old and old["version"] != v:
            notes += f" (replaces canary version {old['version']})"
        elif old:
            notes += f" (was {old['percent']:g}%)"
        if (routing.get("shadow") or {}).get("version") == v:
            del routing["shadow"]
            notes += "; no longer the shadow"
        notes += _pin(ctx, routing, v)
        return routing, f"canary version {v} takes {float(percent):g}% of entities (by {canary_key}){notes}"

    return _apply(root, model, "canary", str(version), edit, reason=reason, actor=actor)


def start_ab(root: str | Path, model: str, version: str, *, control: str | None = None,
             weights: tuple[float, float] = (50.0, 50.0), names: tuple[str, str] = ("control", "treatment"),
             sticky_key: str | None = None, reason: str = "", actor: str | None = None) -> Outcome:
    """A/B test ``version`` (arm ``names[1]``) against ``control`` (default: the primary serving now).

    Entities are split by ``weights`` (sticky by ``entity_ids[sticky_key]``, default ``user_id``).
    Refused while a canary runs.
    """
    if len(weights) != 2 or len(names) != 2 or names[0] == names[1]:
        raise RolloutError("an A/B test takes two distinct arm names and two weights")

    def edit(ctx: _Context) -> tuple[RoutingDict | None, str]:
        v = ctx.require(version)
        routing = dict(ctx.routing or {})
        if routing.get("canary"):
            raise RolloutError(f"a canary is running on {model!r} ({describe_routing(routing)}): "
                               "promote or roll it back before starting an A/B test")
        base = ctx.require(control) if control is not None else ctx.primary_without(v)
        if base is None or base == v:
            raise RolloutError(f"model {model!r}: the control must be a version other than {v} (use --control)")
        old = routing.get("ab")
        routing["ab"] = {
            "variants": {names[0]: {"version": base, "weight": float(weights[0])},
                         names[1]: {"version": v, "weight": float(weights[1])}},
            "sticky_key": sticky_key or (old or {}).get("sticky_key") or "user_id",
        }
        notes = f" (replaces the {_describe_ab(old)})" if old else ""
        if (routing.get("shadow") or {}).get("version") == v:
            del routing["shadow"]
            notes += "; no longer the shadow"
        if not routing.get("primary"):
            routing["primary"] = base  # requests an arm cannot serve fall back to the control
            notes += f"; the primary is pinned to version {base}"
        share = 100 * weights[1] / (weights[0] + weights[1])
        return routing, (f"A/B test: {names[1]} = version {v} ({share:g}% of entities) against "
                         f"{names[0]} = version {base}{notes}")

    return _apply(root, model, "ab", str(version), edit, reason=reason, actor=actor)


def promote(root: str | Path, model: str, version: str, *, reason: str = "", actor: str | None = None) -> Outcome:
    """Make ``version`` the primary; end the canary, A/B test or shadow that involves it."""
    def edit(ctx: _Context) -> tuple[RoutingDict | None, str]:
        v = ctx.require(version)
        routing = dict(ctx.routing or {})
        before = ctx.primary_without(None)
        routing["primary"] = v
        notes = []
        if (routing.get("canary") or {}).get("version") == v:
            del routing["canary"]
            notes.append(f"canary version {v} ended")
        if v in _ab_versions(routing):
            notes.append(f"the {_describe_ab(routing.pop('ab'))} ended")
        if (routing.get("shadow") or {}).get("version") == v:
            del routing["shadow"]
            notes.append(f"shadow version {v} ended")
        was = f" (was {before})" if before and before != v else ""
        return routing, f"version {v} is the primary{was}" + "".join(f"; {n}" for n in notes)

    return _apply(root, model, "promote", str(version), edit, reason=reason, actor=actor)


def pin_primary(root: str | Path, model: str, version: str | None = None, *, reason: str = "",
                actor: str | None = None) -> Outcome:
    """Pin the primary to ``version`` (default: the version serving now).

    Call before publishing a new version into a repository whose model has no pinned
    primary: otherwise the server makes the new highest version the default as soon as it
    is loaded.
    """
    def edit(ctx: _Context) -> tuple[RoutingDict | None, str]:
        routing = dict(ctx.routing or {})
        v = ctx.require(version) if version is not None else ctx.primary_without(None)
        if v is None:
            raise RolloutError(f"model {model!r} has no version to pin")
        routing["primary"] = v
        return routing, f"the primary is pinned to version {v}"

    return _apply(root, model, "pin", None if version is None else str(version), edit, reason=reason, actor=actor)


def rollback(root: str | Path, model: str, version: str | None = None, *, reason: str = "",
             actor: str | None = None) -> Outcome:
    """Undo the last rollout change, or take ``version`` out of live traffic.

    Without ``version``: restore the routing from before the newest change in the history
    that is not undone yet (repeated rollbacks walk further back). With ``version``: remove
    it from the canary, the A/B test and the shadow, and pin the primary to the previous
    primary (the one before ``version`` was promoted, if it is the primary).
    """
    if version is not None:
        return _apply(root, model, "rollback", str(version), lambda ctx: _remove_version(ctx, str(version)),
                      reason=reason, actor=actor)
    target: list[RolloutChange] = []

    def resolve(history: list[RolloutChange]) -> int:
        change = last_undoable(history)
        if change is None:
            raise RolloutError(f"model {model!r} has no rollout change left to roll back "
                               f"(history in {HISTORY_FILENAME}); use `rollback {model} VERSION` to remove a version")
        target.append(change)
        return change.seq

    def edit(ctx: _Context) -> tuple[RoutingDict | None, str]:
        change = target[0]
        drift = "" if change.after == ctx.routing else "; note: the routing had been edited since that change"
        what = f"{change.action} {change.version}" if change.version else change.action
        return change.before, (f"routing restored to before change {change.seq} ({what}): "
                               f"{describe_routing(change.before)}{drift}")

    return _apply(root, model, "rollback", None, edit, reason=reason, actor=actor, resolve_undo=resolve)


def _ab_versions(routing: RoutingDict) -> set[str]:
    ab = routing.get("ab")
    return {a["version"] for a in ab["variants"].values()} if ab else set()


def _previous_primary(ctx: _Context, version: str) -> str | None:
    """The primary before ``version`` became it (from the history), else the highest other version."""
    others = [v for v in ctx.versions if v != version]
    for change in reversed(ctx.history):
        if (change.after or {}).get("primary") != version:
            continue
        before = (change.before or {}).get("primary") or serving_primary(ctx.model, change.before, others)
        if before is not None and before != version and before in ctx.versions:
            return before
    return others[-1] if others else None


def _remove_version(ctx: _Context, version: str) -> tuple[RoutingDict | None, str]:
    routing = dict(ctx.routing or {})
    removed: list[str] = []
    if (routing.get("canary") or {}).get("version") == version:
        del routing["canary"]
        removed.append("the canary")
    if version in _ab_versions(routing):
        arms = {n: a for n, a in routing["ab"]["variants"].items() if a["version"] != version}
        if len(arms) >= 2:
            routing["ab"] = {**routing["ab"], "variants": arms}
            removed.append("its A/B arm")
        else:
            del routing["ab"]
            removed.append("the A/B test (ended)")
    if (routing.get("shadow") or {}).get("version") == version:
        del routing["shadow"]
        removed.append("the shadow")
    primary_now = ctx.primary_without(None)
    notes = ""
    if primary_now == version:
        previous = _previous_primary(ctx, version)
        if previous is None:
            raise RolloutError(f"version {version} is the only version of {ctx.model!r}: nothing to roll back to")
        routing["primary"] = previous
        removed.append("the primary")
        notes = f"; the primary is version {previous} again"
    elif not routing.get("primary") and routing:
        routing["primary"] = ctx.primary_without(version)
        notes = f"; the primary is pinned to version {routing['primary']}"
    if not removed:
        raise RolloutError(f"version {version} is not in the routing of {ctx.model!r} "
                           f"({describe_routing(ctx.routing)})")
    return routing, f"version {version} removed from {', '.join(removed)}{notes}"


# -- reading -----------------------------------------------------------------------------------


def read_routing(root: str | Path, model: str) -> RoutingDict | None:
    """The model's current ``routing`` (normalised), None when it has none."""
    raw = _read_raw(_model_dir(root, model) / CONFIG_FILENAME)
    try:
        return _normalise(raw.get("routing"))
    except ValidationError as exc:
        raise RolloutError(f"model {model!r}: the routing in {CONFIG_FILENAME} is invalid: {_errors(exc)}") from exc


def current_primary(root: str | Path, model: str) -> str | None:
    """The version serving answers with by default now (every version on disk taken as READY);
    None when the model has no directory or no version yet.

    >>> import pathlib, tempfile
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> current_primary(root, "new-model") is None
    True
    """
    if not (Path(root) / check_model_name(model)).is_dir():
        return None
    return serving_primary(model, read_routing(root, model), model_versions(root, model))


def model_versions(root: str | Path, model: str) -> list[str]:
    """The model's versions on disk (directories holding a model), ascending."""
    _model_dir(root, model)  # refuses a model that does not exist
    return ModelRegistry(root).versions(model)


def status(root: str | Path, model: str, last: int = 10) -> RolloutStatus:
    """Routing now, versions, the primary it resolves to, and the ``last`` history entries."""
    routing = read_routing(root, model)
    versions = model_versions(root, model)
    history = read_history(_model_dir(root, model) / HISTORY_FILENAME)
    return RolloutStatus(model, routing, versions, serving_primary(model, routing, versions),
                         history[-last:] if last > 0 else [])
