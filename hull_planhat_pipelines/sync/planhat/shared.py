"""What every Planhat payload builder shares: field mapping, identity text, candidates,
duplicates, change detection and the log events of a skip or a run.

Pure: DataFrames and settings in, DataFrames and ``SyncEvent`` out.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from hull_planhat_pipelines.settings import AttributeMap
from hull_planhat_pipelines.sync.batching import is_missing, jsonable
from hull_planhat_pipelines.sync.canonical import canonical_json
from hull_planhat_pipelines.sync.log import SyncEvent
from hull_planhat_pipelines.sync.planhat.fingerprints import (
    PAYLOAD_COLUMNS,
    VOLATILE_FIELDS,
    fields_text,
    fingerprint,
    parse_fields,
    select_changed,
)

COMPANIES = "companies"
ENDUSERS = "endusers"
ACTIVITIES = "activities"
METRICS = "metrics"
"""Target names, equal to the delivery engine's ``DeliveryTarget`` names."""

NO_EXTERNAL_ID = "No external_id"

Payloads = tuple[pd.DataFrame, list[SyncEvent]]


# -- field mapping ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FieldMap:
    """One Hull attribute -> one (possibly nested) Planhat field."""

    attribute: str
    dotted: str
    path: tuple[str, ...]


def compile_fields(attributes: AttributeMap, *, reserved: Collection[str]) -> tuple[FieldMap, ...]:
    """The mapping as field paths, checked once (a ValueError names the offending field).

    Refused: an empty path part, a field set twice or both as a value and as a parent
    (``custom`` and ``custom.ARR``), an identity field, a field Planhat sets by itself.
    """
    fields: list[FieldMap] = []
    for attribute, dotted in attributes.items():
        path = tuple(dotted.split("."))
        if not all(path):
            raise ValueError(f"Planhat field {dotted!r} (from {attribute!r}) has an empty part")
        if path[0] in reserved:
            raise ValueError(f"Planhat field {dotted!r} is set from the profile's identity")
        if path[0] in VOLATILE_FIELDS:
            raise ValueError(f"Planhat field {dotted!r} is set by Planhat and never sent")
        fields.append(FieldMap(attribute, dotted, path))
    for one in fields:
        for other in fields:
            if one is not other and other.path[: len(one.path)] == one.path:
                raise ValueError(f"Planhat field {one.dotted!r} is mapped twice ({other.dotted!r})")
    return tuple(fields)


def planhat_value(value: Any) -> Any:
    """A Hull attribute value as sent: currency -> amount; None/blank -> None (no value)."""
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, dict) and "amount" in value and set(value) <= {"amount", "currency"}:
        return as_number(value["amount"])
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def as_number(value: Any) -> float | None:
    """A finite float, or None: bools are not numbers; numeric text is (``"12.5"``)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def put_path(payload: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    """Set ``value`` at a nested field path, creating the parent objects."""
    node = payload
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value


def map_attributes(
    attributes: Mapping[str, Any], fields: Sequence[FieldMap]
) -> tuple[dict[str, Any], list[str]]:
    """(payload of the mapped fields holding a value, their dotted paths)."""
    payload: dict[str, Any] = {}
    present: list[str] = []
    for field in fields:
        value = planhat_value(attributes.get(field.attribute))
        if value is not None:
            put_path(payload, field.path, value)
            present.append(field.dotted)
    return payload, present


# -- frame helpers ---------------------------------------------------------------------------
def parse_attributes(value: Any) -> dict[str, Any]:
    """A profile's attributes as a dict, whether stored as JSON text or a mapping."""
    if isinstance(value, str):
        parsed = json.loads(value) if value else {}
        return parsed if isinstance(parsed, dict) else {}
    return dict(value) if isinstance(value, Mapping) else {}


def as_text(value: Any) -> str | None:
    """An identity value as text; None, NaN and blank mean none (the value is kept as is)."""
    if value is None or (not isinstance(value, str) and is_missing(value)):
        return None
    text = str(value)
    return text if text.strip() else None


def _segment_list(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        value = json.loads(value) if value else []
    if value is None or (np.isscalar(value) and is_missing(value)):
        return ()
    return value


def in_segments(segments: pd.Series, wanted: Collection[str]) -> np.ndarray:
    """Row mask: the row's segment list shares a name with ``wanted``."""
    names = frozenset(wanted)
    if not names:
        return np.zeros(len(segments), dtype=bool)
    return np.fromiter(
        (not names.isdisjoint(_segment_list(s)) for s in segments),
        dtype=bool,
        count=len(segments),
    )


def column_values(frame: pd.DataFrame, name: str) -> list[Any]:
    """A column as a list; a missing column reads as None in every row."""
    return frame[name].tolist() if name in frame.columns else [None] * len(frame)


def rows_of(frame: pd.DataFrame, names: Sequence[str]) -> Iterable[tuple[Any, ...]]:
    """Rows as plain tuples of ``names`` (a missing column reads as None)."""
    return zip(*(column_values(frame, name) for name in names), strict=True)


def _utc_stamps(values: pd.Series) -> pd.Series:
    """Timestamps in UTC; text in any ISO form is parsed, what is no time becomes NaT."""
    if pd.api.types.is_datetime64_any_dtype(values):
        return pd.to_datetime(values, utc=True)
    return pd.to_datetime(values, utc=True, errors="coerce", format="mixed")


def iso_ms(values: pd.Series) -> pd.Series:
    """UTC timestamps as ISO-8601 with milliseconds and ``Z``; None where missing."""
    stamps = _utc_stamps(values)
    text = stamps.dt.strftime("%Y-%m-%dT%H:%M:%S.%f").str[:-3] + "Z"
    return text.astype(object).where(stamps.notna(), None)


def skip_event(
    event: str, object_type: str, object_id: Any, reason: str, **details: Any
) -> SyncEvent:
    """One record refused, with its reason (details holding None are left out)."""
    clean = {k: v for k, v in details.items() if v is not None}
    return SyncEvent(
        event=event,
        object_type=object_type,
        object_id=None if object_id is None else str(object_id),
        reason=reason,
        details=clean,
    )


def empty_payloads(extra: Sequence[str]) -> pd.DataFrame:
    """No payloads, with the columns a builder's frame has."""
    return pd.DataFrame({c: pd.Series([], dtype=object) for c in (*PAYLOAD_COLUMNS, *extra)})


@dataclass
class _Candidates:
    """Mapped records before change detection; ``order`` ranks duplicates (lower wins)."""

    extra: tuple[str, ...]
    rows: list[dict[str, Any]]

    def frame(self) -> pd.DataFrame:
        columns = ["key", "hull_id", "payload", "present", "order", *self.extra]
        return pd.DataFrame(self.rows, columns=columns)


def _dedupe(
    frame: pd.DataFrame, event: str, object_type: str, reason: str, *, id_column: str = "hull_id"
) -> tuple[pd.DataFrame, list[SyncEvent]]:
    """One row per key: the lowest ``order`` wins; the others are skipped (``id_column``
    names them in the log)."""
    ranked = frame.sort_values("order", kind="stable")
    duplicate = ranked.duplicated("key", keep="first").to_numpy()
    winners = dict(zip(ranked["key"][~duplicate], ranked[id_column][~duplicate], strict=True))
    events = [
        skip_event(event, object_type, object_id, reason, key=key, sent=winners[key])
        for key, object_id in zip(
            ranked["key"][duplicate], ranked[id_column][duplicate], strict=True
        )
    ]
    return frame.loc[~frame.index.isin(ranked.index[duplicate])], events


def _finish(
    candidates: pd.DataFrame,
    fingerprints: pd.DataFrame | None,
    target: str,
    fields: Sequence[FieldMap],
    *,
    force: bool,
    extra: Sequence[str],
) -> tuple[pd.DataFrame, int]:
    """Fingerprint, keep what changed (or all, forced), add clears: (payloads, unchanged)."""
    if candidates.empty:
        return empty_payloads(extra), 0
    candidates = candidates.assign(
        fingerprint=[fingerprint(p) for p in candidates["payload"]],
        fields=[fields_text(p) for p in candidates["present"]],
    )
    selected = select_changed(candidates, fingerprints, target, force=force)
    _add_clears(selected, fields)
    selected["target"] = target
    return selected[[*PAYLOAD_COLUMNS, *extra]], len(candidates) - len(selected)


def _add_clears(selected: pd.DataFrame, fields: Sequence[FieldMap]) -> None:
    """Null for each mapped field delivered last time that has no value now (in place)."""
    paths = {field.dotted: field.path for field in fields}
    for payload, present, previous in zip(
        selected["payload"], selected["present"], selected["previous_fields"], strict=True
    ):
        gone = (parse_fields(previous) & paths.keys()) - set(present)
        for dotted in sorted(gone):
            put_path(payload, paths[dotted], None)


def updated_rank(frame: pd.DataFrame) -> np.ndarray:
    """0 for the most recently updated row, ascending; rows without a time come last."""
    if "updated_at" not in frame.columns:
        return np.zeros(len(frame), dtype="int64")
    stamps = pd.to_datetime(frame["updated_at"], utc=True, errors="coerce")
    ranks = stamps.rank(method="first", ascending=False, na_option="bottom")
    return ranks.to_numpy(dtype="int64")


def select_upserts(
    rows: list[dict[str, Any]],
    events: list[SyncEvent],
    *,
    target: str,
    subject: str,
    object_type: str,
    duplicate: str,
    extra: Sequence[str],
    fields: Sequence[FieldMap],
    fingerprints: pd.DataFrame | None,
    force: bool,
    counts: Mapping[str, Any],
    id_column: str = "hull_id",
    unchanged_before: int = 0,
) -> Payloads:
    """A builder's mapped records as payloads: one per key (the others skipped as
    ``duplicate``), only those changed since their last delivery (all when forced), clears
    added. The events gain the duplicates and, last, ``<subject>.progress``: ``counts`` and
    how many were skipped, unchanged (``unchanged_before`` of them found so before the
    builder) and selected."""
    frame, duplicates = _dedupe(
        _Candidates(tuple(extra), rows).frame(),
        f"{subject}.skip",
        object_type,
        duplicate,
        id_column=id_column,
    )
    logged = [*events, *duplicates]
    payloads, unchanged = _finish(frame, fingerprints, target, fields, force=force, extra=extra)
    logged.append(
        progress_event(
            f"{subject}.progress",
            **counts,
            skipped=len(logged),
            unchanged=unchanged + unchanged_before,
            selected=len(payloads),
        )
    )
    return payloads, logged


def progress_event(event: str, **counts: Any) -> SyncEvent:
    """A builder's closing event: what it selected, skipped and left unchanged."""
    return SyncEvent(event=event, details=counts)


SEND_ORDER = "send_order"
"""Payload column (where a builder sets one): a delivery sends no record before every record
of a lower order was answered, and no request mixes two orders (``deliver``'s
``order_column``)."""
WAITS_FOR = "waits_for"
"""Payload column beside ``SEND_ORDER``: the keys of the records this one follows, as JSON
text (``[]`` for most). Only those not delivered hold it back (``deliver``'s
``waits_column``): an unrelated failure holds nothing."""


def payloads_as_json(payloads: pd.DataFrame) -> pd.DataFrame:
    """A copy with ``payload`` as JSON text, for storing the frame as a table.

    A DuckDB table built from a column of dicts stores their Python repr, which is not JSON;
    JSON text is stored as is and the delivery engine reads it back (nulls kept: they clear).
    """
    text = [p if isinstance(p, str) else canonical_json(jsonable(p)) for p in payloads["payload"]]
    return payloads.assign(payload=pd.Series(text, index=payloads.index, dtype=object))


# -- operator queries ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class QueryAnswer:
    """What one operator query (metric, SQL activities) returned: its rows, or the first line
    of its error. The warehouse layer runs the query; the builders only read its answer."""

    rows: pd.DataFrame | None = None
    error: str | None = None
    unchanged: int = 0
    """Rows the warehouse layer left out of ``rows`` (``planhat_queries.without_unchanged``):
    items sent last time exactly as they would be now, counted as unchanged."""

    def checked(self, required: Sequence[str]) -> QueryAnswer:
        """This answer, or a failed one when its rows lack a ``required`` column."""
        if self.rows is None:
            return self
        try:
            require_columns(self.rows, required)
        except ValueError as exc:
            return QueryAnswer(error=str(exc))
        return self


def require_columns(frame: pd.DataFrame, required: Sequence[str]) -> pd.DataFrame:
    """``frame`` when it has every ``required`` column; a ValueError naming those missing."""
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(f"the query has no column {', '.join(missing)}")
    return frame
