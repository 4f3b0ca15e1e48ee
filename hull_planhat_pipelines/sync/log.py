"""Stable event names for every skip, error and success, as rows of ``ops.sync_log``."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from typing import Any

import pandas as pd
from pydantic import BaseModel, Field, field_validator

from hull_planhat_pipelines.sync.canonical import canonical_json

EVENT_NAME = re.compile(
    r"^(incoming|outgoing)\.(user|account|event|job|user_event)\.(start|success|skip|error|progress|deleted|merged)$"
)

SYNC_LOG_COLUMNS = [
    "logged_at",
    "run_id",
    "asset",
    "event",
    "object_type",
    "object_id",
    "reason",
    "details",
]


class SyncEvent(BaseModel):
    """One logged outcome: ``incoming.user.skip`` with its reason, ``incoming.job.error`` ..."""

    event: str
    object_type: str | None = None
    object_id: str | None = None
    reason: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)

    @field_validator("event")
    @classmethod
    def _stable_name(cls, value: str) -> str:
        if not EVENT_NAME.match(value):
            raise ValueError(f"not a stable event name: {value!r}")
        return value

    @property
    def level(self) -> str:
        return level_of(self.event)

    def message(self) -> str:
        parts = [self.event]
        if self.object_type or self.object_id:
            parts.append(f"{self.object_type or ''}:{self.object_id or ''}")
        if self.reason:
            parts.append(self.reason)
        return " ".join(parts)


def level_of(event: str) -> str:
    """The Dagster log level of an event name: errors, skips as warnings, the rest info."""
    return {"error": "error", "skip": "warning"}.get(event.rsplit(".", 1)[1], "info")


LOG_ROW_COLUMNS = ["event", "object_type", "object_id", "reason", "details"]
"""Events in bulk (one per record of a first load: hundreds of thousands), built as a frame in
SQL rather than as one object each; ``details`` is canonical JSON text."""


def empty_log_rows() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype=object) for c in LOG_ROW_COLUMNS})


def log_row_message(row: pd.Series) -> str:
    """One bulk row as ``SyncEvent.message`` words it."""
    return SyncEvent.model_construct(
        event=row["event"],
        object_type=None if pd.isna(row["object_type"]) else row["object_type"],
        object_id=None if pd.isna(row["object_id"]) else row["object_id"],
        reason=None if pd.isna(row["reason"]) else row["reason"],
        details={},
    ).message()


def _stamped(frame: pd.DataFrame, run_id: str, asset: str, at: dt.datetime) -> pd.DataFrame:
    frame = frame.assign(logged_at=at, run_id=run_id, asset=asset)[SYNC_LOG_COLUMNS]
    frame["logged_at"] = pd.to_datetime(frame["logged_at"], utc=True)
    for column in SYNC_LOG_COLUMNS[1:]:
        frame[column] = frame[column].astype("string")
    return frame


def events_frame(
    events: Iterable[SyncEvent], *, run_id: str, asset: str, at: dt.datetime | None = None
) -> pd.DataFrame:
    rows = [
        {
            "event": e.event,
            "object_type": e.object_type,
            "object_id": e.object_id,
            "reason": e.reason,
            "details": canonical_json(e.details),
        }
        for e in events
    ]
    frame = pd.DataFrame(rows, columns=LOG_ROW_COLUMNS)
    return _stamped(frame, run_id, asset, at or dt.datetime.now(dt.UTC))


def log_rows_frame(
    rows: pd.DataFrame, *, run_id: str, asset: str, at: dt.datetime | None = None
) -> pd.DataFrame:
    """Bulk rows (``LOG_ROW_COLUMNS``) as ``ops.sync_log`` rows."""
    return _stamped(rows[LOG_ROW_COLUMNS], run_id, asset, at or dt.datetime.now(dt.UTC))
