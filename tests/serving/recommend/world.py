"""One trained recommendation world per test process, shared by the serving and evaluation tests.

Training the two-tower model and the ranker takes several seconds; every test module that
needs them calls :func:`trained_world` and gets the same models (a read-only repository in
a temporary directory removed at exit).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

from engine.recommend.synthetic import build_world, item_vectors, train_models


@functools.lru_cache(maxsize=1)
def trained_world() -> dict[str, Any]:
    """``{"rw", "repo", "models", "vectors"}``: world, model repository, training runs, item vectors."""
    repo = Path(tempfile.mkdtemp(prefix="rtml-recs-"))
    atexit.register(shutil.rmtree, repo, ignore_errors=True)
    rw = build_world(n_users=200, n_items=300, n_train=8000, n_test=2000)
    models = train_models(rw, repo, epochs=2)
    return {"rw": rw, "repo": repo, "models": models, "vectors": item_vectors(rw, models["two_tower"])}
