"""What each column of the asset tables holds: the descriptions of an asset's Columns tab.

A column is described once where it means the same in every table of a group (``record``
in every Copper table, ``hull_id`` in every Hull table); a table's own entries come first. A
destination's columns are its ``source_sql``'s, the operator's to describe, so it has none
here; a column found in no entry is shown without a description (a test keeps every column
of the packaged tables described)."""

from __future__ import annotations

_COPPER: dict[str, str] = {
    # the columns of every Copper table; an object's typed ones are described by its declaration
    "id": "Copper's id of the record: one row per record.",
    "name": "The record's name as Copper sends it (null where the object has none).",
    "primary_email": "A lead's email, a person's first one (null for the other objects).",
    "date_created": "When the record was created in Copper (UTC).",
    "date_modified": "When the record last changed in Copper (UTC).",
    "partition_date": "The UTC day of the object's date field (``date_modified``; activities:"
    " ``activity_date``), clamped up to the first partition's start: its year is the row's"
    " partition.",
    "record": "The record whole, as Copper's API returned it (JSON).",
    "fields": "The record flattened as the mapping reads it (JSON): standard fields, names"
    " resolved for ids, and ``custom:<name>`` per custom field.",
    "problems": "What could not be resolved in the record (JSON list; null when nothing).",
    "_fetched_at": "When the pipeline fetched the record.",
    "_row_hash": "Hash of the row's content: a re-fetch of an unchanged record is not rewritten.",
}

_PROFILE: dict[str, str] = {
    "hull_id": "The profile's Hull id.",
    "external_id": "The profile's external id claim.",
    "anonymous_ids": "Every source record the profile holds (``copper-person:<id>``,"
    " ``planhat:<_id>``, ...).",
    "attributes": "The profile's attributes (JSON object): ``<group>/<name>`` per source group.",
    "created_at": "When the profile was created in the store.",
    "updated_at": "When the profile was last rewritten by a sync.",
    "segments": "The names of the configured segments the profile is in.",
}

_UPSERT: dict[str, str] = {
    "hull_id": "The profile the change is for.",
    "external_id": "The profile's external id when the change was computed.",
    "anonymous_id": "The source record that wrote the attribute.",
    "attribute": "``<group>/<name>`` of the attribute that changed.",
    "value": "The new value (JSON; null clears the attribute).",
    "previous": "The value before the change (JSON; null: it had none).",
    "source_object": "The kind of source record (``lead``, ``person``, ``company``, ...).",
    "source_id": "The source record's id in its system.",
    "is_new_profile": "The change created the profile.",
    "run_id": "The Dagster run that computed the change.",
    "computed_at": "When the run computed it.",
}

_HULL: dict[str, dict[str, str]] = {
    "users": {
        **_PROFILE,
        "email": "The user's email claim (its identity in Hull and Planhat).",
        "account_hull_id": "The Hull id of the user's account (null: none).",
    },
    "accounts": {**_PROFILE, "domain": "The account's email domain claim (its identity)."},
    "user_upserts": {**_UPSERT, "email": "The user's email when the change was computed."},
    "account_upserts": {**_UPSERT, "domain": "The account's domain when the change was computed."},
    "events": {
        "event_id": "The event's id (``copper-activity:<id>``): each event is stored once.",
        "user_hull_id": "The user the event belongs to.",
        "name": "The event's name (the activity type's).",
        "properties": "The event's properties (JSON).",
        "occurred_at": "When it happened.",
        "source": "The system it came from.",
        "source_id": "Its id in that system.",
    },
}

_SNAPSHOT: dict[str, str] = {
    "_id": "Planhat's id of the record.",
    "external_id": "The record's ``externalId``.",
    "source_id": "The record's ``sourceId``.",
    "created_at": "Planhat's ``createdAt``.",
    "updated_at": "Planhat's ``updatedAt`` (Planhat moves it on every write).",
    "record": "The record whole, as Planhat listed it (JSON).",
    "snapshot_at": "When the snapshot the row belongs to was taken: its history key.",
    "_fetched_at": "When the pipeline fetched the record.",
    "email": "The record's ``email``.",
    "first_name": "``firstName``.",
    "last_name": "``lastName``.",
}

_PAYLOAD: dict[str, str] = {
    "target": "The Planhat target the payload is for (``companies``, ``endusers``, ...).",
    "key": "The record's key in that target: what deliveries and fingerprints are kept by.",
    "hull_id": "The profile the payload was mapped from.",
    "payload": "The body as it is sent (JSON).",
    "fingerprint": "Hash of the content: sent again only when it differs from the last"
    " delivered one.",
    "fields": "The names of the fields the payload sets (JSON list).",
    "change": "Why it is sent: ``new`` (never delivered), ``changed`` or ``forced`` (a forced"
    " send of unchanged content).",
    "external_id": "The profile's external id.",
}

_PLANHAT: dict[str, dict[str, str]] = {
    "enduser_snapshots": {
        **_SNAPSHOT,
        "company_id": "Planhat's id of the enduser's company.",
    },
    "company_snapshots": {
        **_SNAPSHOT,
        "name": "The company's name.",
        "owner": "Planhat user id of the owner.",
        "co_owner": "Planhat user id of the co-owner.",
        "phase": "The company's phase.",
        "status": "The company's status.",
    },
    "team_members": {
        **_SNAPSHOT,
        "nick_name": "``nickName``.",
        "inactive": "Planhat's ``inactive`` (an inactive user may still own companies).",
        "removed": "Planhat's ``removed``: a removed user is not a valid owner.",
        "is_hidden": "Planhat's ``isHidden``.",
    },
    "company_payloads": _PAYLOAD,
    "enduser_payloads": {
        **_PAYLOAD,
        "email": "The enduser's email.",
        "company_external_id": "The external id of the enduser's company.",
        "send_order": "Sent only after every record of a lower order was answered (an email"
        " moving between endusers).",
        "waits_for": "The keys of the records this one follows (JSON list).",
    },
    "activity_payloads": {
        **_PAYLOAD,
        "user_hull_id": "The user the event belongs to.",
        "occurred_at": "When the event happened.",
    },
    "metric_payloads": {
        **_PAYLOAD,
        "dimension_id": "The metric's dimension.",
        "model": "The Planhat model the metric is on.",
        "date": "The day the value is for.",
        "value": "The metric's value.",
    },
    "deliveries": {
        "run_id": "The Dagster run that delivered.",
        "delivered_at": "When the outcome was recorded.",
        "target": "The Planhat target (``companies``, ``endusers``, ``activities``, ...).",
        "key": "The record's key in that target.",
        "status": "The outcome: ``created``, ``updated``, ``unchanged``, ``sent``, ``error``,"
        " ``pending`` (sent, no answer yet) ...",
        "error": "Planhat's or the transport's error, when it failed.",
        "response": "Planhat's answer for the record (JSON).",
        "request": "Which call of the delivery carried it (null: nothing was sent).",
        "attempts": "HTTP tries of that call, retries included.",
        "batch": "The number of the batch the record was sent in.",
        "planhat_id": "Planhat's ``_id`` of the record, when the answer named it.",
        "hull_id": "The profile the record was mapped from.",
        "change": "Why it was sent (``new``, ``changed``, ``forced``).",
        "fingerprint": "The fingerprint of the content this row is about.",
    },
}

DESCRIPTIONS: dict[str, dict[str, str]] = {
    **{f"hull.{name}": columns for name, columns in _HULL.items()},
    **{f"planhat.{name}": columns for name, columns in _PLANHAT.items()},
}
"""Per table (``schema.name``), its columns' descriptions."""

BY_SCHEMA: dict[str, dict[str, str]] = {"copper": _COPPER}
"""Per schema, the columns every table of it has."""


def column_description(table: str, column: str) -> str | None:
    """The description of ``column`` in ``table`` (``schema.name``), None when none."""
    found = DESCRIPTIONS.get(table, {}).get(column)
    return found if found is not None else BY_SCHEMA.get(table.split(".")[0], {}).get(column)
