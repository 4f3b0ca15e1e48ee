"""Cutting records into API-sized batches and turning rows into JSON payloads.

Pure: DataFrames and lists in, lists out. Planhat refuses a bulk call of more than 5,000 items,
so the size is validated here, before anything is sent, and the order of records is kept (the
position of an item in its request is how a response is tied back to it).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeVar, overload

import numpy as np
import pandas as pd

from hull_planhat_pipelines.sync.canonical import wire_json

T = TypeVar("T")

MAX_BULK_RECORDS = 5000
"""Planhat's cap on one bulk upsert (any model's collection path)."""
MAX_ANALYTICS_RECORDS = 100_000
"""The most items one analytics post (activities, dimension data) takes."""


def check_batch_size(batch_size: int, max_size: int = MAX_BULK_RECORDS) -> int:
    """``batch_size`` when it lies in 1..``max_size``; a ValueError saying why otherwise."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise ValueError(f"batch_size must be an integer, got {batch_size!r}")
    if not 1 <= batch_size <= max_size:
        raise ValueError(f"batch_size must be between 1 and {max_size}, got {batch_size}")
    return batch_size


def batch_count(total: int, batch_size: int) -> int:
    """Requests needed for ``total`` records: the minimum any delivery can do."""
    return math.ceil(total / batch_size) if total > 0 else 0


def batch_bounds(total: int, batch_size: int, max_size: int = MAX_BULK_RECORDS) -> list[range]:
    """Positions of each batch, in order: ``[range(0, 5000), range(5000, 5001)]``."""
    check_batch_size(batch_size, max_size)
    return [range(start, min(start + batch_size, total)) for start in range(0, total, batch_size)]


MAX_ANALYTICS_BYTES = 30 * 1024 * 1024
"""Planhat's analytics host refuses bodies over 32 MB: batches stay under 30 MB, leaving room
for the array's brackets and commas and any difference in JSON spacing."""


def json_size(item: Any) -> int:
    """Bytes of ``item`` as the client sends it (compact JSON, UTF-8)."""
    return len(wire_json(item).encode())


def split_by_size(bounds: Sequence[range], sizes: Sequence[int], max_bytes: int) -> list[range]:
    """``bounds`` with every batch whose items add up to more than ``max_bytes`` cut further,
    order kept. An item alone above the limit stays a batch of one (the API refuses it, and
    only it)."""
    out: list[range] = []
    for bound in bounds:
        start, total = bound.start, 0
        for position in bound:
            size = sizes[position] + 1  # the comma between items
            if position > start and total + size > max_bytes:
                out.append(range(start, position))
                start, total = position, 0
            total += size
        if start < bound.stop:
            out.append(range(start, bound.stop))
    return out


@overload
def batches(
    records: pd.DataFrame, batch_size: int, *, max_size: int = ...
) -> Iterator[pd.DataFrame]: ...
@overload
def batches(records: Sequence[T], batch_size: int, *, max_size: int = ...) -> Iterator[list[T]]: ...
def batches(
    records: pd.DataFrame | Sequence[T], batch_size: int, *, max_size: int = MAX_BULK_RECORDS
) -> Iterator[pd.DataFrame] | Iterator[list[T]]:
    """Consecutive slices of at most ``batch_size`` records, order preserved; none when empty."""
    bounds = batch_bounds(len(records), batch_size, max_size)
    if isinstance(records, pd.DataFrame):
        return (records.iloc[b.start : b.stop] for b in bounds)
    return (list(records[b.start : b.stop]) for b in bounds)


def is_missing(value: Any) -> bool:
    """None, NaN, NaT or pandas NA (containers are values, even empty ones)."""
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def jsonable(value: Any) -> Any:
    """A cell as JSON: numpy to Python, NaN/NaT to None, times to ISO-8601 with ``Z``.

    Plain values return at once: payload dicts are walked for every record sent.
    """
    kind = type(value)
    if value is None or kind is str or kind is int or kind is bool:
        return value
    if kind is float:
        return value if math.isfinite(value) else None
    if kind is dict:
        return {k if type(k) is str else str(k): jsonable(v) for k, v in value.items()}
    if kind is list:
        return [jsonable(v) for v in value]
    return _jsonable_other(value)


def _jsonable_other(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [jsonable(v) for v in value]
    if is_missing(value):
        return None
    if isinstance(value, np.datetime64 | pd.Timestamp):
        value = pd.Timestamp(value).to_pydatetime()
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value.isoformat(timespec="milliseconds") + "Z"
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


def _payload(value: Any) -> dict[str, Any]:
    if isinstance(value, str):  # JSON columns come back from DuckDB as text
        value = json.loads(value)
    if not isinstance(value, Mapping):
        raise ValueError(f"a payload must be an object, got {type(value).__name__}")
    return jsonable(value)


def record_payloads(
    frame: pd.DataFrame,
    *,
    payload_column: str | None,
    key_column: str,
    exclude: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """The body of each record, in order.

    With ``payload_column`` the column holds the payload dicts (or JSON text) as the mapping
    built them, sent as they are. Without it the row itself is the payload, minus the key
    column and ``exclude``; a missing cell is left out rather than sent as null, because a SQL
    null means "no value here", not "empty this field in Planhat".
    """
    if payload_column is not None:
        return [_payload(value) for value in frame[payload_column].tolist()]
    dropped = {key_column, *exclude}
    columns = [c for c in frame.columns if c not in dropped]
    rows = frame[columns].to_dict(orient="records")
    return [{str(k): jsonable(v) for k, v in row.items() if not is_missing(v)} for row in rows]
