"""Change detection for outgoing payloads: content fingerprints, advanced only on delivery.

A payload is sent only when its mapped content differs from the content last delivered
successfully for the same ``(target, key)``. The fingerprint is the sha256 of the payload's
canonical JSON (sorted keys, JSON values, integral numbers written as integers, nulls left
out), so neither dict key order nor ``1200.0`` vs ``1200`` makes a change. Nothing Planhat
writes by itself (``updatedAt``, ``lastUpdated``) ever enters a payload, so feeding Planhat's
own records back cannot make a loop.

The fingerprints table (``FINGERPRINT_COLUMNS``), one row per delivered record:
- ``target``: the delivery target's name (``companies``, ``endusers``, ``activities``, ...);
- ``key``: the record's key in that target (see the payload builders);
- ``fingerprint``: sha256 hex of the content delivered;
- ``fields``: JSON text of the sorted list of mapped fields (dotted paths) that held a value
  in that delivery: a mapped field that later loses its value is sent as null once, to clear
  it in Planhat;
- ``delivered_at``: when that delivery succeeded (UTC).

Pure: frames in, frames out. The delivery statuses that count as delivered mirror
``clients.planhat_outcomes.DELIVERED`` (``sync`` may not import ``clients``; a test keeps the
two equal).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from hull_planhat_pipelines.sync.batching import is_missing, jsonable
from hull_planhat_pipelines.sync.canonical import content_hash, content_json

DELIVERED_STATUSES: frozenset[str] = frozenset(
    {"created", "updated", "unchanged", "sent", "confirmed"}
)
"""Outcome statuses Planhat accounted for (``error``, ``ignored``, ``dry_run`` are not)."""

FINGERPRINT_COLUMNS = ["target", "key", "fingerprint", "fields", "delivered_at"]
PAYLOAD_COLUMNS = ["target", "key", "hull_id", "payload", "fingerprint", "fields", "change"]
"""Every payload frame: ``payload`` is the body dict as sent; ``change`` says why the row is
there: ``new`` (never delivered), ``changed`` (content differs) or ``forced`` (a forced send of
unchanged content)."""

VOLATILE_FIELDS = frozenset({"_id", "updatedAt", "lastUpdated", "createdAt"})
"""Fields Planhat sets by itself: never in a payload, so never in a fingerprint."""


def utc_timestamp(value: dt.datetime | pd.Timestamp) -> pd.Timestamp:
    """An aware UTC timestamp; a naive one is taken as UTC (the pipeline's clock is UTC)."""
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def canonical_content(value: Any) -> Any:
    """A payload as JSON values in canonical form, in one walk: numpy and times converted
    (``jsonable``), integral floats as ints (``1200.0`` is ``1200``), null object members
    left out. Plain JSON values (the common case) take the fast path."""
    kind = type(value)
    if value is None or kind is str or kind is int or kind is bool:
        return value
    if kind is float:
        if not math.isfinite(value):
            return None
        return int(value) if value.is_integer() else value
    if kind is dict:
        out = {}
        for key, item in value.items():
            item = canonical_content(item)
            if item is not None:
                out[key if type(key) is str else str(key)] = item
        return out
    if kind is list:
        return [canonical_content(item) for item in value]
    converted = jsonable(value)
    return None if converted is None else canonical_content(converted)


def fingerprint(payload: Mapping[str, Any]) -> str:
    """sha256 hex of the payload's canonical JSON (sorted keys, no spaces), nulls left out.

    Nulls are clears of fields no longer set; leaving them out makes the content after a clear
    equal to the content of the next run, which has nothing left to clear.
    """
    return content_hash(canonical_content(dict(payload)))


def fields_text(fields: Iterable[str]) -> str:
    """The ``fields`` column value: canonical JSON of the sorted field paths."""
    return _fields_text(tuple(fields))


@functools.lru_cache(maxsize=4096)
def _fields_text(fields: tuple[str, ...]) -> str:
    """Most records of a run share one set of fields: each set is encoded once."""
    return content_json(sorted(set(fields)))


def parse_fields(value: Any) -> frozenset[str]:
    """The ``fields`` cell as a set: JSON text, a list or array; missing means none."""
    if isinstance(value, str):
        value = json.loads(value) if value else []
    elif value is None or (not isinstance(value, list | tuple | np.ndarray) and is_missing(value)):
        return frozenset()
    return frozenset(str(v) for v in value)


def empty_fingerprints() -> pd.DataFrame:
    """A fingerprints table with no rows (the state before any delivery)."""
    return pd.DataFrame(
        {
            "target": pd.Series([], dtype=object),
            "key": pd.Series([], dtype=object),
            "fingerprint": pd.Series([], dtype=object),
            "fields": pd.Series([], dtype=object),
            "delivered_at": pd.Series([], dtype="datetime64[us, UTC]"),
        }
    )


def normalize_fingerprints(frame: pd.DataFrame | None) -> pd.DataFrame:
    """The table as stored, or empty; ``fields`` may be absent (an older table: no clears)."""
    if frame is None or frame.empty:
        return empty_fingerprints()
    missing = {"target", "key", "fingerprint"} - set(frame.columns)
    if missing:
        raise ValueError(f"fingerprints frame lacks columns: {', '.join(sorted(missing))}")
    out = frame.copy()
    if "fields" not in out.columns:
        out["fields"] = None
    if "delivered_at" not in out.columns:
        out["delivered_at"] = pd.NaT
    out["delivered_at"] = pd.to_datetime(out["delivered_at"], utc=True)
    out["key"] = out["key"].astype(str)
    return out[FINGERPRINT_COLUMNS].reset_index(drop=True)


def last_delivered(fingerprints: pd.DataFrame | None, target: str) -> pd.DataFrame:
    """``key, previous_fingerprint, previous_fields`` of one target, one row per key."""
    table = normalize_fingerprints(fingerprints)
    rows = table[table["target"] == target]
    rows = rows.drop_duplicates("key", keep="last")
    return pd.DataFrame(
        {
            "key": rows["key"].to_numpy(dtype=object),
            "previous_fingerprint": rows["fingerprint"].to_numpy(dtype=object),
            "previous_fields": rows["fields"].to_numpy(dtype=object),
        }
    )


def select_changed(
    candidates: pd.DataFrame, fingerprints: pd.DataFrame | None, target: str, *, force: bool
) -> pd.DataFrame:
    """The candidate rows to send, each with its ``change`` (``new``/``changed``/``forced``)
    and the ``previous_fields`` of its last delivery (None when never delivered).

    ``candidates`` needs unique ``key`` values and a ``fingerprint``. A forced send keeps every
    row: the seed's "batch send" re-delivers all in-segment records whatever was sent before.
    """
    previous = last_delivered(fingerprints, target)
    merged = candidates.merge(previous, on="key", how="left", validate="many_to_one")
    known = merged["previous_fingerprint"].notna().to_numpy()
    same = known & (merged["fingerprint"] == merged["previous_fingerprint"]).to_numpy()
    change = np.where(~known, "new", np.where(same, "forced", "changed"))
    merged["change"] = change
    keep = np.ones(len(merged), dtype=bool) if force else ~same
    return merged.loc[keep].drop(columns="previous_fingerprint").reset_index(drop=True)


def fresh_fingerprints(
    outcomes: pd.DataFrame,
    payloads: pd.DataFrame,
    now: dt.datetime,
    *,
    delivered: Collection[str] = DELIVERED_STATUSES,
) -> pd.DataFrame:
    """The fingerprint rows one request's ``outcomes`` earn: the payload's fingerprint and
    fields for each record Planhat accounted for, with the Planhat ``_id`` its answer named
    (``planhat_id``, None when it named none) and the profile it was sent for (``hull_id``).
    What a checkpoint upserts.

    Matched in plain Python: a one-record destination asks this once a group of a few dozen
    records, a few hundred times a run, where a frame merge costs ten times as much. A record
    repeated in either frame counts once, as its last row says."""
    columns = [*FINGERPRINT_COLUMNS, "planhat_id", "hull_id"]
    ok = outcomes["status"].isin(list(delivered)).to_numpy()
    if not ok.any():
        return pd.DataFrame({c: pd.Series([], dtype=object) for c in columns})
    targets, keys = outcomes["target"].to_numpy()[ok], outcomes["key"].to_numpy()[ok]
    named = (
        outcomes["planhat_id"].to_numpy()[ok] if "planhat_id" in outcomes else [None] * len(keys)
    )
    ids: dict[tuple[str, str], str | None] = {}
    for target, key, value in zip(targets, keys, named, strict=True):
        ids[(str(target), str(key))] = None if is_missing(value) else str(value)
    profiles = payloads["hull_id"].to_numpy() if "hull_id" in payloads else [None] * len(payloads)
    sent: dict[tuple[Any, str], tuple[Any, Any, Any]] = {}
    for target, key, content, fields, hull_id in zip(
        payloads["target"].to_numpy(),
        payloads["key"].to_numpy(),
        payloads["fingerprint"].to_numpy(),
        payloads["fields"].to_numpy(),
        profiles,
        strict=True,
    ):
        pair = (target, str(key))
        sent.pop(pair, None)  # the last row of a repeated record, in its place
        sent[pair] = (content, fields, None if is_missing(hull_id) else str(hull_id))
    rows = [
        (target, key, content, fields, ids[(target, key)], hull_id)
        for (target, key), (content, fields, hull_id) in sent.items()
        if (target, key) in ids
    ]
    stamp = utc_timestamp(now)
    return pd.DataFrame(
        {
            "target": pd.Series([r[0] for r in rows], dtype=object),
            "key": pd.Series([r[1] for r in rows], dtype=object),
            "fingerprint": pd.Series([r[2] for r in rows], dtype=object),
            "fields": pd.Series([r[3] for r in rows], dtype=object),
            "delivered_at": pd.Series([stamp] * len(rows), dtype="datetime64[us, UTC]"),
            "planhat_id": pd.Series([r[4] for r in rows], dtype=object),
            "hull_id": pd.Series([r[5] for r in rows], dtype=object),
        }
    )
