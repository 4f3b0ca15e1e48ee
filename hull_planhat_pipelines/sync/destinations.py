"""Records for a configured destination (pure): SQL rows -> keyed, fingerprinted payloads."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from hull_planhat_pipelines.settings import DestinationSettings
from hull_planhat_pipelines.sync.batching import jsonable
from hull_planhat_pipelines.sync.fingerprints import fields_text, fingerprint, select_changed
from hull_planhat_pipelines.sync.log import SyncEvent

KEY_COLUMNS = ("event_id", "external_id", "id", "hull_id")
"""A record's key: the first of these the SQL returns (else its content's fingerprint)."""
NO_EXTERNAL_ID = "No external_id for the path"
RECORD_COLUMNS = ["target", "key", "hull_id", "payload", "fingerprint", "fields", "change"]


def _key(row: dict[str, Any], needs_external_id: bool, digest: str) -> str | None:
    if needs_external_id:
        value = row.get("external_id")
        return None if value in (None, "") else str(value)
    for column in KEY_COLUMNS:
        if row.get(column) not in (None, ""):
            return str(row[column])
    return digest


def destination_records(
    source: pd.DataFrame,
    destination: DestinationSettings,
    fingerprints: pd.DataFrame | None,
    *,
    force: bool = False,
) -> tuple[pd.DataFrame, list[SyncEvent]]:
    """The rows to send (``payload`` as JSON text, excluded attributes removed) that changed
    since their last successful delivery; a row whose path needs an external id and has none
    is skipped with its reason."""
    needs_external_id = "{external_id}" in destination.path
    excluded = set(destination.exclude)
    rows: dict[str, dict[str, Any]] = {}
    events: list[SyncEvent] = []
    for raw in source.to_dict("records"):
        row = {k: jsonable(v) for k, v in raw.items()}
        payload = {k: v for k, v in row.items() if k not in excluded}
        digest = fingerprint(payload)
        key = _key(row, needs_external_id, digest)
        if key is None:
            events.append(
                SyncEvent(
                    event="outgoing.event.skip",
                    object_type=destination.name,
                    object_id=str(row.get("hull_id") or row.get("event_id") or ""),
                    reason=NO_EXTERNAL_ID,
                )
            )
            continue
        rows[key] = {
            "target": destination.name,
            "key": key,
            "hull_id": row.get("hull_id") or row.get("user_hull_id"),
            "payload": json.dumps(payload, sort_keys=True, default=str, ensure_ascii=False),
            "fingerprint": digest,
            "fields": fields_text(sorted(payload)),
        }
    candidates = pd.DataFrame(list(rows.values()), columns=RECORD_COLUMNS[:-1])
    selected = select_changed(candidates, fingerprints, destination.name, force=force)
    return selected.reindex(columns=RECORD_COLUMNS), events
