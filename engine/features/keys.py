"""Entity keys: how a view's entity field values become one key (Redis, Parquet, datasets).

>>> composite_key(["u42"])
'u42'
>>> composite_key(["u%1", "i|1"])
'u%251|i%7C1'
"""

from __future__ import annotations

from typing import Sequence


def composite_key(values: Sequence[str]) -> str:
    """The entity key of a view from its entity field values, as the features dataflow writes it.

    One field: the value unchanged. Several: each value escaped (``%`` -> ``%25`` first, then
    ``|`` -> ``%7C``) and joined with ``|``, so that no two tuples share a key.
    """
    if len(values) == 1:
        return values[0]
    return "|".join(v.replace("%", "%25").replace("|", "%7C") for v in values)
