"""Builders of the frames the Hull profile sync reads, from plain dicts (pure test helpers).

Copper rows are given as normalized ``fields`` dicts (what ``copper.records.normalize``
produces); the typed columns are derived from them the way ``records_frame`` does.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pandas as pd

from hull_planhat_pipelines.settings import (
    Settings,
    default_config_path,
    load_settings,
    parse_settings,
)
from hull_planhat_pipelines.sync.copper.records import frame_columns, frame_dtypes

T0 = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
NOW = dt.datetime(2024, 3, 2, 12, tzinfo=dt.UTC)


def example_settings() -> Settings:
    """The packaged configuration: the agreed example file, as it stands."""
    return load_settings(default_config_path())


def settings_with(**copper: Any) -> Settings:
    """The example settings with ``copper`` keys replaced."""
    data = example_settings().model_dump(mode="json")
    data["copper"].update(copper)
    return parse_settings(data)


def _seconds(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.timestamp()
    return float(value)


def copper_frame(object_name: str, records: list[dict[str, Any]]) -> pd.DataFrame:
    """A ``copper_current.<object>`` frame; each record is the normalized ``fields`` dict, with
    ``opportunity_type`` (opportunities) and activity columns read from it too."""
    rows = []
    for fields in records:
        fields = {"date_modified": T0.timestamp(), **fields}
        row: dict[str, Any] = {c.name: fields.get(c.name) for c in frame_columns(object_name)}
        for column in ("date_created", "date_modified", "activity_date"):
            if column in row:
                row[column] = _seconds(row[column])
        row["fields"] = json.dumps(fields, default=str)
        row["record"] = row["fields"]
        rows.append(row)
    columns = [c.name for c in frame_columns(object_name)]
    frame = pd.DataFrame(rows, columns=columns)
    for column in ("date_created", "date_modified", "activity_date"):
        if column in frame:
            frame[column] = pd.to_datetime(frame[column].astype("float64"), unit="s", utc=True)
    dtypes = {k: v for k, v in frame_dtypes(object_name).items() if k in frame.columns}
    return frame.astype(dtypes)


def planhat_frame(records: list[dict[str, Any]], kind: str) -> pd.DataFrame:
    """A Planhat snapshot frame (``planhat_current.companies`` / ``.endusers``) from records."""
    columns = {
        "companies": {"external_id": "externalId", "source_id": "sourceId"},
        "endusers": {
            "email": "email",
            "external_id": "externalId",
            "company_id": "companyId",
            "first_name": "firstName",
            "last_name": "lastName",
        },
    }[kind]
    rows = []
    for record in records:
        row = {"_id": record["_id"], "name": record.get("name")}
        row.update({column: record.get(field) for column, field in columns.items()})
        row["record"] = json.dumps(record, sort_keys=True)
        row["updated_at"] = record.get("updatedAt")
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["updated_at"] = pd.to_datetime(frame["updated_at"], utc=True)
    return frame


def sync_once(
    settings: Settings,
    store: Any,
    copper: Any = None,
    planhat: Any = None,
    now: dt.datetime = NOW,
) -> tuple[Any, Any]:
    """compute -> apply: ``(changes, next store)``."""
    from hull_planhat_pipelines.sync.hull.apply import apply_changes
    from hull_planhat_pipelines.sync.hull.changes import compute_changes

    changes = compute_changes(settings, store, copper, planhat)
    return changes, apply_changes(store, changes, now)


def profile(frame: pd.DataFrame, anonymous_id: str) -> dict[str, Any]:
    """The one row of ``frame`` holding ``anonymous_id``, attributes as a dict."""
    rows = frame[[anonymous_id in ids for ids in frame["anonymous_ids"]]]
    assert len(rows) == 1, f"{len(rows)} profiles hold {anonymous_id}"
    row = rows.iloc[0].to_dict()
    row["attributes"] = json.loads(row["attributes"])
    return row


def upserted(changes_frame: pd.DataFrame) -> dict[tuple[str, str], Any]:
    """{(hull_id, attribute): decoded value} of an upserts frame."""
    return {
        (r.hull_id, r.attribute): None if r.value is None else json.loads(r.value)
        for r in changes_frame.itertuples()
    }
