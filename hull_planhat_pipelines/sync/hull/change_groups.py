"""What part of a profile an apply rewrote, as the change log records it.

A payload target maps the profiles changed since it last mapped; most of them need not be mapped
again when what changed is something its mapping does not read. The Planhat snapshot taken after
a delivery writes every delivered record's ``planhat/*`` attributes back to its profile: counted
as a change, it made the next cycle remap (and fingerprint) every profile just delivered, a cost
of the last delivery instead of the new change. So the log says which attribute groups changed
(``copper_person``, ``planhat``, ...: an attribute's part before its first ``/``), and a reader
counts only the groups its mapping reads, plus ``STRUCTURAL``.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import suppress

import numpy as np
import pandas as pd

STRUCTURAL = "*"
"""The group of every rewrite that is not only an attribute's: a new profile, an identity,
account link or segment that changed, a merge, a whole-store rewrite. Every reader
counts it."""

ANONYMOUS_IDS = "anonymous_ids"
"""The group of a rewrite that only added or removed anonymous ids (the Planhat id a snapshot
links after a create, a Copper record linked or detached): no payload mapping reads them."""

GROUP_COLUMNS = ["hull_id", "grp"]

UNCOMPARED = frozenset({"attributes", "created_at", "updated_at", "anonymous_ids"})
"""Profile columns a rewrite is not judged structural by: attributes are judged per group,
anonymous ids are a group of their own, and the times move with every write."""


def attribute_group(attribute: str) -> str:
    """The group an attribute is logged under: its part before the first ``/`` (an ungrouped
    attribute is a group of its own)."""
    return attribute.split("/", 1)[0]


def read_groups(attributes: Iterable[str | None]) -> frozenset[str]:
    """The groups a mapping that reads ``attributes`` must be told about, ``STRUCTURAL``
    included."""
    return frozenset({STRUCTURAL, *(attribute_group(a) for a in attributes if a)})


def group_rows(ids: Iterable[object], grp: str) -> pd.DataFrame:
    """``(hull_id, grp)`` rows giving each of ``ids`` the one group ``grp``."""
    return pd.DataFrame(
        {"hull_id": pd.Series([str(h) for h in ids], dtype=object), "grp": grp},
        columns=GROUP_COLUMNS,
    )


def _comparable(value: object) -> object:
    if value is None or type(value) is str:  # nearly every value: answered first
        return value
    if isinstance(value, (list, tuple, np.ndarray)):
        return tuple(map(_comparable, value))
    if isinstance(value, float) and value != value:
        return None
    if value is pd.NA or value is pd.NaT:
        return None
    return value


def _ids(frame: pd.DataFrame) -> list[str]:
    return [str(h) for h in frame["hull_id"]]


def _nested(values: np.ndarray) -> bool:
    return any(isinstance(v, (list, tuple, np.ndarray)) for v in values)


def _nested_differ(a: object, b: object) -> bool:
    """Two lists that are equal as lists are equal (nearly every pair: answered without
    converting them); any other pair is compared as ``_comparable`` sees it."""
    sequences = (list, tuple, np.ndarray)
    if isinstance(a, sequences) and isinstance(b, sequences):
        with suppress(ValueError):  # arrays inside: compared element by element below
            if list(a) == list(b):
                return False
    return _comparable(a) != _comparable(b)


def _differs(new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """Per position, whether the two values differ as ``_comparable`` sees them (every kind of
    null alike). Plain values are compared as arrays; a column holding lists, value by value."""
    if _nested(new) or _nested(old):
        return np.fromiter(
            (_nested_differ(a, b) for a, b in zip(new, old, strict=True)),
            dtype=bool,
            count=len(new),
        )
    new_null, old_null = pd.isna(new), pd.isna(old)
    both = ~new_null & ~old_null
    differs = new_null != old_null
    differs[both] = np.asarray(new[both] != old[both], dtype=bool)
    return differs


def changed_groups(
    before: pd.DataFrame, after: pd.DataFrame, upserts: pd.DataFrame
) -> pd.DataFrame:
    """``(hull_id, grp)`` for each profile of ``after`` (the rewritten rows, ``segments``
    included) against ``before`` (the same profiles as stored, absent when new).

    A profile gets ``STRUCTURAL`` when it is new or any compared column differs (``segments``
    too, when both frames have it), ``ANONYMOUS_IDS`` when its anonymous ids changed, and the
    group of each attribute ``upserts`` changed on it;
    a rewritten profile with neither gets ``STRUCTURAL``: a rewrite nothing explains is
    counted by everyone, never dropped. Columns are compared as arrays, aligned on ``hull_id``
    (a profile stored twice: its last row)."""
    columns = [c for c in after.columns if c not in UNCOMPARED and c != "hull_id"]
    columns = [c for c in columns if c in before.columns]
    before_ids = pd.Series(_ids(before), dtype=object)
    last = ~before_ids.duplicated(keep="last").to_numpy()
    stored = before[last]
    after_ids = _ids(after)
    positions = pd.Index(before_ids[last]).get_indexer(after_ids)
    known = positions >= 0
    at = np.where(known, positions, 0)

    def compared(column: str) -> tuple[np.ndarray, np.ndarray]:
        new = after[column].to_numpy(dtype=object)
        if not len(stored):
            return new, np.full(len(new), None, dtype=object)
        return new, stored[column].to_numpy(dtype=object)[at]

    attributes = upserts.loc[upserts["hull_id"].isin(after["hull_id"]), ["hull_id", "attribute"]]
    grouped = pd.DataFrame(
        {
            "hull_id": attributes["hull_id"].astype(str).to_numpy(dtype=object),
            # per distinct attribute, then looked up: tens of names, thousands of rows
            "grp": attributes["attribute"]
            .map({a: attribute_group(str(a)) for a in attributes["attribute"].unique()})
            .to_numpy(dtype=object),
        },
        columns=GROUP_COLUMNS,
    )
    ids = np.asarray(after_ids, dtype=object)
    linked = ids[known & _differs(*compared("anonymous_ids"))]
    grouped = pd.concat([grouped, group_rows(linked, ANONYMOUS_IDS)], ignore_index=True)
    explained = pd.Index(grouped["hull_id"]).unique()
    structural = ~known | ~pd.Index(ids).isin(explained)
    for column in columns:
        structural |= _differs(*compared(column))
    frame = pd.concat([grouped, group_rows(ids[structural], STRUCTURAL)], ignore_index=True)
    return frame.drop_duplicates(ignore_index=True)
