"""Hull events and operator SQL -> Planhat user activities (each sent once).

Tracked events (``planhat.tracking_events``) of users in ``planhat.contact_segments`` become
activities keyed by their ``event_id``; configured activity queries add items keyed
``sql:<query>:<activity_id>``. Either kind is never sent twice: the keys already delivered are
passed back as ``sent_event_ids``.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from hull_planhat_pipelines.settings import ActivityQuerySettings, AttributeMap, Settings
from hull_planhat_pipelines.sync.batching import jsonable
from hull_planhat_pipelines.sync.log import SyncEvent
from hull_planhat_pipelines.sync.planhat import shared
from hull_planhat_pipelines.sync.planhat.endusers import account_external_ids
from hull_planhat_pipelines.sync.planhat.fingerprints import (
    PAYLOAD_COLUMNS,
    fields_text,
    fingerprint,
)

EVENT_NO_USER_IDENTITY = "User has neither email nor external id"
EVENT_NO_DATE = "Event has no occurred_at"
DEFAULT_NAME_SOURCES: tuple[tuple[str, ...], ...] = (
    ("copper_person/name",),
    ("copper_lead/name",),
    ("planhat/name",),
    ("planhat/first_name", "planhat/last_name"),
)
"""Where an activity's ``name`` comes from when the enduser mapping names no ``name``,
``firstName`` or ``lastName`` source: the first of these holding a value."""


def name_sources(user_attributes: AttributeMap) -> tuple[tuple[str, ...], ...]:
    """Attributes an activity's ``name`` is read from, first match wins: the one mapped to the
    enduser ``name``; those mapped to ``firstName`` and ``lastName``; then the defaults."""
    by_field = {field: attribute for attribute, field in user_attributes.items()}
    sources: list[tuple[str, ...]] = []
    if "name" in by_field:
        sources.append((by_field["name"],))
    parts = tuple(by_field[f] for f in ("firstName", "lastName") if f in by_field)
    if parts:
        sources.append(parts)
    return (*sources, *DEFAULT_NAME_SOURCES)


def display_name(attributes: Mapping[str, Any], sources: Sequence[tuple[str, ...]]) -> str | None:
    """The first source with text, its parts joined by a space."""
    for source in sources:
        parts = [shared.as_text(attributes.get(a)) for a in source]
        words = [p.strip() for p in parts if isinstance(p, str) and p.strip()]
        if words:
            return " ".join(words)
    return None


SentEventIds = Iterable[Any] | pd.Series | pd.DataFrame | None


def sent_ids(sent_event_ids: SentEventIds) -> set[str]:
    """Event ids already delivered, from a set/list, a Series, or a frame (``event_id``
    column, or a fingerprints/outcome frame: its ``activities`` rows' ``key``)."""
    if sent_event_ids is None:
        return set()
    if isinstance(sent_event_ids, pd.DataFrame):
        frame = sent_event_ids
        if "event_id" in frame.columns:
            values = frame["event_id"]
        else:
            if "target" in frame.columns:
                frame = frame.loc[frame["target"] == shared.ACTIVITIES]
            values = frame["key"]
        return {str(v) for v in values if shared.as_text(v) is not None}
    return {str(v) for v in sent_event_ids if shared.as_text(v) is not None}


def _people(
    users: pd.DataFrame, accounts: pd.DataFrame | None, segments: Collection[str]
) -> pd.DataFrame:
    """In-segment users by ``hull_id``: the identity and name an activity carries."""
    people = users.loc[shared.in_segments(users["segments"], segments)]
    people = people.drop_duplicates("hull_id")
    columns = {
        "user_hull_id": shared.column_values(people, "hull_id"),
        "_email": [shared.as_text(v) for v in shared.column_values(people, "email")],
        "_external_id": [shared.as_text(v) for v in shared.column_values(people, "external_id")],
        "_company": [shared.as_text(v) for v in account_external_ids(people, accounts)],
        "_attributes": shared.column_values(people, "attributes"),
    }
    return pd.DataFrame({name: pd.Series(values, dtype=object) for name, values in columns.items()})


def activity_payloads(
    events: pd.DataFrame,
    users: pd.DataFrame,
    accounts: pd.DataFrame | None,
    settings: Settings,
    sent_event_ids: SentEventIds,
    *,
    left_out: Mapping[str, int] | None = None,
) -> shared.Payloads:
    """User activities for tracked events of in-segment users, each event sent once.

    ``left_out``: counts of events the caller did not read (``events``, ``not_tracked``,
    ``already_sent``, ``not_in_segment``), added to the progress event's, so it reports the
    whole table.

    Columns: ``PAYLOAD_COLUMNS`` + ``user_hull_id``, ``occurred_at``; ``key`` is the event id
    (advance it like any fingerprint, then pass those rows back as ``sent_event_ids``).
    Events are ordered by time. Untracked names, repeated ids, events already sent, unknown
    users and users outside the contact segments are counted in the progress event, not
    logged one by one.
    """
    config = settings.planhat
    before = dict(left_out or {})
    extra = ("user_hull_id", "occurred_at")
    is_tracked = events["name"].isin(list(config.tracking_events)).to_numpy()
    tracked = events.loc[is_tracked]
    repeated = tracked["event_id"].astype(str).duplicated(keep="first").to_numpy()
    tracked = tracked.loc[~repeated]
    already = tracked["event_id"].astype(str).isin(sent_ids(sent_event_ids)).to_numpy()
    fresh = tracked.loc[~already]
    people = _people(users, accounts, config.contact_segments)
    fresh = fresh.assign(user_hull_id=fresh["user_hull_id"].astype(object))
    selected = fresh.merge(people, on="user_hull_id", how="inner")
    selected = selected.assign(date=shared.iso_ms(selected["occurred_at"]))
    selected = selected.sort_values(["occurred_at", "event_id"], kind="stable")
    skips, rows = _activity_rows(selected, name_sources(config.user_attributes))
    payloads = pd.DataFrame(rows, columns=[*PAYLOAD_COLUMNS, *extra])
    if payloads.empty:
        payloads = shared.empty_payloads(extra)
    skips.append(
        shared.progress_event(
            "outgoing.event.progress",
            events=len(events) + before.get("events", 0),
            not_tracked=int((~is_tracked).sum()) + before.get("not_tracked", 0),
            repeated=int(repeated.sum()),
            already_sent=int(already.sum()) + before.get("already_sent", 0),
            not_in_segment=len(fresh) - len(selected) + before.get("not_in_segment", 0),
            skipped=len(skips),
            selected=len(payloads),
        )
    )
    return payloads, skips


def _activity_rows(
    selected: pd.DataFrame, sources: Sequence[tuple[str, ...]]
) -> tuple[list[SyncEvent], list[dict[str, Any]]]:
    """One activity item per selected event (names computed once per user)."""
    names: dict[Any, str | None] = {}
    skips: list[SyncEvent] = []
    rows: list[dict[str, Any]] = []
    columns = ["event_id", "user_hull_id", "name", "properties", "occurred_at", "date"]
    columns += ["_email", "_external_id", "_company", "_attributes"]
    for row in shared.rows_of(selected, columns):
        event_id, user, action, properties, occurred_at, date = row[:6]
        email, external_id, company, raw = row[6:]
        reason = (
            EVENT_NO_USER_IDENTITY
            if email is None and external_id is None
            else EVENT_NO_DATE
            if date is None
            else None
        )
        if reason is not None:
            skips.append(
                shared.skip_event(
                    "outgoing.event.skip", "event", event_id, reason, user_hull_id=user
                )
            )
            continue
        if user not in names:
            names[user] = display_name(shared.parse_attributes(raw), sources)
        item: dict[str, Any] = {
            "action": action,
            "info": shared.parse_attributes(properties),
            "date": date,
        }
        optional = {
            "email": email,
            "externalId": external_id,
            "name": names[user],
            "companyExternalId": company,
        }
        item.update({k: v for k, v in optional.items() if v is not None})
        rows.append(
            {
                "target": shared.ACTIVITIES,
                "key": str(event_id),
                "hull_id": user,
                "payload": item,
                "fingerprint": fingerprint(item),
                "fields": fields_text(()),
                "change": "new",
                "user_hull_id": user,
                "occurred_at": occurred_at,
            }
        )
    return skips, rows


ACTIVITY_SQL_REQUIRED = ("activity_id", "action")
ACTIVITY_NO_IDENTITY = "No email or eu_ext_id"
ACTIVITY_QUERY_FAILED = "Activity query failed"


def sql_activity_key(query: ActivityQuerySettings, activity_id: Any) -> str:
    """An activity query's item key: sent once per query and activity id."""
    return f"sql:{query.name}:{activity_id}"


def sql_activity_keys(
    answers: Sequence[tuple[ActivityQuerySettings, shared.QueryAnswer]],
) -> set[str]:
    """The keys of the answers' activities: the only ``sql:`` fingerprints a payload run
    compares with (every activity ever sent keeps one; a query over recent days would
    otherwise cost each cycle all of them)."""
    keys: set[str] = set()
    for query, answer in answers:
        rows = answer.checked(ACTIVITY_SQL_REQUIRED).rows
        if rows is not None:
            keys.update(sql_activity_key(query, jsonable(v)) for v in rows["activity_id"].tolist())
    return keys


def sql_activity_payloads(
    answers: Sequence[tuple[ActivityQuerySettings, shared.QueryAnswer]],
    sent_event_ids: SentEventIds,
) -> shared.Payloads:
    """User activities from the answers of the configured SQL queries, each ``activity_id``
    sent once (key ``sql:<query>:<activity_id>``). An item names its enduser by ``email`` or,
    without one, by ``euExtId``; ``count`` says how many times the action happened. A failed
    query is logged (``outgoing.event.error``) and the others still go."""
    extra = ("user_hull_id", "occurred_at")
    sent = sent_ids(sent_event_ids)
    rows: list[dict[str, Any]] = []
    events: list[SyncEvent] = []
    for query, answer in answers:
        checked = answer.checked(ACTIVITY_SQL_REQUIRED)
        frame = checked.rows
        if frame is None:
            events.append(
                SyncEvent(
                    event="outgoing.event.error",
                    object_type="activity_query",
                    object_id=query.name,
                    reason=ACTIVITY_QUERY_FAILED,
                    details={"error": checked.error},
                )
            )
            continue
        dates = (
            shared.iso_ms(frame["date"]).tolist()
            if "date" in frame.columns
            else [None] * len(frame)
        )
        for record, date in zip(frame.to_dict("records"), dates, strict=True):
            cell = {k: jsonable(v) for k, v in record.items()}
            key = sql_activity_key(query, cell["activity_id"])
            if key in sent:
                continue
            email, eu_ext_id = cell.get("email"), cell.get("eu_ext_id")
            if email in (None, "") and eu_ext_id in (None, ""):
                events.append(
                    shared.skip_event("outgoing.event.skip", "event", key, ACTIVITY_NO_IDENTITY)
                )
                continue
            info = cell.get("info")
            if isinstance(info, str):
                try:
                    info = json.loads(info)
                except ValueError:
                    info = {"value": info}
            item: dict[str, Any] = {"action": cell["action"]}
            optional = {
                "email": email or None,
                "euExtId": None if email else eu_ext_id,
                "companyExternalId": cell.get("company_external_id"),
                "count": cell.get("count"),
                "weight": cell.get("weight"),
                "name": cell.get("name"),
                "date": date,
                "info": info,
            }
            item.update({k: v for k, v in optional.items() if v not in (None, "")})
            rows.append(
                {
                    "target": shared.ACTIVITIES,
                    "key": key,
                    "hull_id": None,
                    "payload": item,
                    "fingerprint": fingerprint(item),
                    "fields": fields_text(()),
                    "change": "new",
                    "user_hull_id": None,
                    "occurred_at": date,
                }
            )
    payloads = pd.DataFrame(rows, columns=[*PAYLOAD_COLUMNS, *extra])
    return (payloads if not payloads.empty else shared.empty_payloads(extra)), events
