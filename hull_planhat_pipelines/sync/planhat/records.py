"""Planhat records as typed tables (pure: records in, DataFrames out).

Every row keeps the record whole (``record`` JSON). Planhat's company listing returns ``owner``
and ``coOwner`` as ``{_id, nickName}`` objects where a single GET returns the plain id, so both
shapes are reduced to the id here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import pandas as pd

from hull_planhat_pipelines.sync.canonical import canonical_json

COMPANY_FIELDS = (
    "_id",
    "name",
    "externalId",
    "sourceId",
    "domains",
    "owner",
    "coOwner",
    "phase",
    "status",
    "mrr",
    "arr",
    "h",
    "tags",
    "custom",
    "createdAt",
    "updatedAt",
    "lastUpdated",
)
ENDUSER_FIELDS = (
    "_id",
    "email",
    "externalId",
    "sourceId",
    "firstName",
    "lastName",
    "name",
    "position",
    "phone",
    "companyId",
    "companyName",
    "primary",
    "archived",
    "custom",
    "lastActive",
    "createdAt",
    "updatedAt",
)


def user_id(value: Any) -> str | None:
    """An owner/coOwner as listed (``{_id, nickName}``) or as fetched one by one (the id)."""
    if isinstance(value, dict):
        value = value.get("_id")
    return str(value) if value not in (None, "") else None


def _timestamps(values: Sequence[Any]) -> pd.Series:
    """Planhat's dates as UTC timestamps; anything else is null.

    Planhat writes ISO-8601 with milliseconds and ``Z``; ``ISO8601`` also reads the other ISO
    forms (no milliseconds, an offset, a date alone) one by one. Without a format pandas
    guesses one from the first value and turns every value written differently into null,
    warning when it cannot guess.
    """
    return pd.to_datetime(
        pd.Series(values, dtype="object"), utc=True, errors="coerce", format="ISO8601"
    )


def _text(values: Sequence[Any]) -> pd.Series:
    return pd.Series([None if v is None else str(v) for v in values], dtype="string")


def _json(records: Sequence[dict[str, Any]]) -> pd.Series:
    return pd.Series(
        [canonical_json(r) for r in records],
        dtype="string",
    )


def _frame(
    records: Sequence[dict[str, Any]],
    text_columns: dict[str, Any],
    *,
    fetched_at: dt.datetime,
    snapshot: bool,
) -> pd.DataFrame:
    records = _dedupe(records)
    columns: dict[str, pd.Series] = {
        name: _text([getter(r) for r in records]) for name, getter in text_columns.items()
    }
    columns["created_at"] = _timestamps([r.get("createdAt") for r in records])
    columns["updated_at"] = _timestamps([r.get("updatedAt") for r in records])
    columns["record"] = _json(records)
    frame = pd.DataFrame(columns)
    if snapshot:  # every row of one snapshot carries the time it was taken: its history key
        frame["snapshot_at"] = pd.Series([fetched_at] * len(frame), dtype="datetime64[us, UTC]")
    frame["_fetched_at"] = pd.Series([fetched_at] * len(frame), dtype="datetime64[us, UTC]")
    return frame


def _dedupe(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """A listing paged by offset can repeat a record that moved between pages: keep the last.
    Records without an ``_id`` are kept one by one (never collapsed into one): the profile
    sync skips each with a logged reason."""
    by_id: dict[Any, dict[str, Any]] = {}
    for position, record in enumerate(records):
        _id = record.get("_id")
        by_id[str(_id) if _id not in (None, "") else ("no _id", position)] = record
    return list(by_id.values())


def companies_frame(records: Sequence[dict[str, Any]], *, fetched_at: dt.datetime) -> pd.DataFrame:
    return _frame(
        records,
        {
            "_id": lambda r: r.get("_id"),
            "name": lambda r: r.get("name"),
            "external_id": lambda r: r.get("externalId"),
            "source_id": lambda r: r.get("sourceId"),
            "owner": lambda r: user_id(r.get("owner")),
            "co_owner": lambda r: user_id(r.get("coOwner")),
            "phase": lambda r: r.get("phase"),
            "status": lambda r: r.get("status"),
        },
        fetched_at=fetched_at,
        snapshot=True,
    )


def endusers_frame(records: Sequence[dict[str, Any]], *, fetched_at: dt.datetime) -> pd.DataFrame:
    return _frame(
        records,
        {
            "_id": lambda r: r.get("_id"),
            "email": lambda r: r.get("email"),
            "external_id": lambda r: r.get("externalId"),
            "source_id": lambda r: r.get("sourceId"),
            "company_id": lambda r: r.get("companyId"),
            "first_name": lambda r: r.get("firstName"),
            "last_name": lambda r: r.get("lastName"),
        },
        fetched_at=fetched_at,
        snapshot=True,
    )


def users_frame(records: Sequence[dict[str, Any]], *, fetched_at: dt.datetime) -> pd.DataFrame:
    frame = _frame(
        records,
        {
            "_id": lambda r: r.get("_id"),
            "email": lambda r: r.get("email"),
            "nick_name": lambda r: r.get("nickName"),
            "first_name": lambda r: r.get("firstName"),
            "last_name": lambda r: r.get("lastName"),
        },
        fetched_at=fetched_at,
        snapshot=False,
    )
    for flag in ("inactive", "removed", "isHidden"):
        frame[flag.lower() if flag != "isHidden" else "is_hidden"] = pd.Series(
            [bool(r.get(flag)) for r in _dedupe(records)], dtype="boolean"
        )
    return frame
