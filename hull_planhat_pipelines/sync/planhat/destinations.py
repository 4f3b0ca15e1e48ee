"""Records for a configured destination (pure): SQL rows -> keyed, fingerprinted payloads."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import quote

import pandas as pd

from hull_planhat_pipelines.settings import DestinationSettings
from hull_planhat_pipelines.sync.batching import jsonable
from hull_planhat_pipelines.sync.canonical import canonical_json
from hull_planhat_pipelines.sync.log import SyncEvent
from hull_planhat_pipelines.sync.planhat.fingerprints import (
    fields_text,
    fingerprint,
    select_changed,
)

KEY_COLUMNS = ("event_id", "external_id", "id", "hull_id")
"""A record's key: the first of these the SQL returns (else its content's fingerprint)."""
NO_EXTERNAL_ID = "No external_id for the path"
RECORD_COLUMNS = ["target", "key", "hull_id", "payload", "fingerprint", "fields", "change"]
ROUTE_COLUMNS = ["method", "path", "read_back"]
ON_CHANGE_IGNORED = "Changed since delivered; on_change: ignore"
SOURCE_HASH = "_source_hash"
"""The column of a source row's hash, when the warehouse computed one (never sent)."""


def stable_external_id(destination: DestinationSettings, key: str, digest: str) -> str:
    """The ``externalId`` a destination gives a record: from its key, so a resend names the
    same record; with ``on_change: create`` each content version is its own record."""
    if destination.on_change == "create":
        return f"{destination.name}-{key}-{digest[:12]}"
    return f"{destination.name}-{key}"


def _record_path(collection: str, ref: str) -> str:
    return f"{collection.rstrip('/')}/{quote(ref, safe='!$&()*+,;=:@')}"


def is_collection(destination: DestinationSettings) -> bool:
    return "{" not in destination.path


def _route(
    destination: DestinationSettings,
    row: Mapping[str, Any],
    planhat_ids: Mapping[str, str],
    in_doubt: Collection[str],
) -> tuple[str, str, str | None]:
    """(method, path, read-back path) of one record of a POST-to-collection destination.

    New: POST, read back first when an earlier create's outcome is unknown. Changed (or
    forced): with ``on_change: update``, PUT to the record it created (its ``_id``, kept from
    the create's answer); without a known ``_id``, read back by ``externalId`` then create."""
    key, path = str(row["key"]), destination.path
    ext = json.loads(row["payload"]).get("externalId")
    read_back = _record_path(path, f"extid-{ext}") if ext not in (None, "") else None
    if row["change"] != "new" and destination.on_change == "update":
        known = planhat_ids.get(key)
        if known:
            return "PUT", _record_path(path, known), None
        return "POST", path, read_back
    return "POST", path, read_back if key in in_doubt else None


def _key(row: dict[str, Any], needs_external_id: bool, digest: str) -> str | None:
    if needs_external_id:
        value = row.get("external_id")
        return None if value in (None, "") else str(value)
    for column in KEY_COLUMNS:
        if row.get(column) not in (None, ""):
            return str(row[column])
    return digest


def map_rows(
    source: pd.DataFrame, destination: DestinationSettings
) -> tuple[pd.DataFrame, list[SyncEvent]]:
    """Every source row as a keyed, fingerprinted record (``RECORD_COLUMNS`` but ``change``;
    one per key, the last row wins); a row whose path needs an external id and has none is
    skipped with its reason. A ``SOURCE_HASH`` column of the source is not sent: the record
    of a key carries the hashes of all its rows, as a list (the warehouse remembers what each
    source row mapped to)."""
    needs_external_id = "{external_id}" in destination.path
    keyed = destination.stable_key and is_collection(destination)
    excluded = {*destination.exclude, SOURCE_HASH}
    carried = SOURCE_HASH in source.columns
    rows: dict[str, dict[str, Any]] = {}
    hashes: dict[str, list[str]] = {}
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
        if keyed and payload.get("externalId") in (None, ""):
            payload = {**payload, "externalId": stable_external_id(destination, key, digest)}
        rows[key] = {
            "target": destination.name,
            "key": key,
            "hull_id": row.get("hull_id") or row.get("user_hull_id"),
            "payload": canonical_json(payload),
            "fingerprint": digest,
            "fields": fields_text(sorted(payload)),
        }
        if carried:
            hashes.setdefault(key, []).append(row[SOURCE_HASH])
    mapped = pd.DataFrame(list(rows.values()), columns=RECORD_COLUMNS[:-1])
    if carried:
        mapped[SOURCE_HASH] = [hashes[key] for key in mapped["key"]]
    return mapped, events


def destination_records(
    source: pd.DataFrame,
    destination: DestinationSettings,
    fingerprints: pd.DataFrame | None,
    *,
    force: bool = False,
    planhat_ids: Mapping[str, str] | None = None,
    in_doubt: Collection[str] = (),
) -> tuple[pd.DataFrame, list[SyncEvent]]:
    """The rows to send (``map_rows``, then ``select_records``)."""
    candidates, events = map_rows(source, destination)
    selected, more = select_records(
        candidates,
        destination,
        fingerprints,
        force=force,
        planhat_ids=planhat_ids,
        in_doubt=in_doubt,
    )
    return selected, events + more


def select_records(
    candidates: pd.DataFrame,
    destination: DestinationSettings,
    fingerprints: pd.DataFrame | None,
    *,
    force: bool = False,
    planhat_ids: Mapping[str, str] | None = None,
    in_doubt: Collection[str] = (),
) -> tuple[pd.DataFrame, list[SyncEvent]]:
    """The mapped records to send (``payload`` as JSON text, excluded attributes removed): the
    ones that changed since their last successful delivery.

    A collection path gives each record a stable ``externalId`` (``stable_key``); a POST
    destination's rows carry their own call (``ROUTE_COLUMNS``): see ``_route``. ``planhat_ids``
    maps keys to the Planhat ``_id`` their create returned; ``in_doubt`` holds keys whose last
    call went out without an answer."""
    events: list[SyncEvent] = []
    candidates = candidates[RECORD_COLUMNS[:-1]]
    selected = select_changed(candidates, fingerprints, destination.name, force=force)
    selected = selected.reindex(columns=RECORD_COLUMNS)
    if destination.on_change == "ignore":
        ignored = selected["change"] == "changed"
        events += [
            SyncEvent(
                event="outgoing.event.skip",
                object_type=destination.name,
                object_id=str(key),
                reason=ON_CHANGE_IGNORED,
            )
            for key in selected.loc[ignored, "key"]
        ]
        selected = selected.loc[~ignored].reset_index(drop=True)
    if destination.method == "POST" and is_collection(destination):
        routes = [
            _route(destination, row, planhat_ids or {}, set(in_doubt))
            for row in selected.to_dict("records")
        ]
        return selected.assign(
            method=[r[0] for r in routes],
            path=[r[1] for r in routes],
            read_back=[r[2] for r in routes],
        ), events
    return selected, events
