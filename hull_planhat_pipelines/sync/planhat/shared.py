"""Hull profiles -> Planhat payloads: companies, endusers, user activities and metrics.

Pure: profile frames in, payload frames (``fingerprints.PAYLOAD_COLUMNS`` plus a few
identity columns) and ``SyncEvent`` skips out; the delivery engine sends the ``payload``
column keyed by ``key``. Each builder returns ``(payloads, events)``; ``events`` holds one
``outgoing.<kind>.skip`` per record refused (with its reason) and, last, one
``outgoing.<kind>.progress`` whose ``details`` count what was selected, skipped, unchanged and
left out by the filters (records outside the filters get no per-record log).

Mapping rules (the seed's, unless said otherwise):
- Only accounts in ``planhat.company_segments`` become companies, only users in
  ``planhat.contact_segments`` become endusers and send activities. A company depends on its
  account's segments alone: a user in a contact segment never brings its account along.
- ``account_attributes`` / ``user_attributes`` map a Hull attribute to a Planhat field; a
  dotted field is nested (``custom.ARR`` -> ``{"custom": {"ARR": ...}}``).
- A currency value ``{"amount": 1200.0, "currency": "USD"}`` is sent as its amount: Planhat
  number fields hold plain numbers, in the tenant's currency.
- No value (attribute absent, null, or an empty string) means the field is left out, never
  sent as null; ``0`` and ``false`` are values (the seed stripped every falsy value, which
  could not send a zero ARR). Hull keeps no null attributes (clearing one removes it), so a
  mapped field that held a value in the last successful delivery and has none now is sent
  once as null to clear it in Planhat. Only currently mapped fields are cleared (dropping a
  mapping never wipes Planhat data), and never ``owner``/``coOwner``.
- Identity fields are set from the profile, never from the mappings: companies carry
  ``externalId`` (the account's external id, their bulk-upsert keyable); endusers ``email``
  and/or ``externalId`` and ``companyExternalId`` (their account's external id). A mapping
  onto an identity field, onto ``owner``/``coOwner``, or onto a field Planhat sets by itself
  (``updatedAt``, ...) is a configuration error.
- Owner and co-owner: the value of ``owner_attribute`` / ``co_owner_attribute`` (None: not
  synced) must be the ``_id`` of a Planhat user that is not ``removed`` (``inactive`` users
  are still assignable); otherwise the whole account is skipped (``Invalid Owner ID`` /
  ``Invalid Co-Owner ID``) without any request. No value: no owner field, not a skip.
- Keys: a company's key is its external id; an enduser's is ``external_id:<id>`` when the
  user has an external id, else ``email:<email>`` (Planhat matches ``externalId`` before
  ``email``); an activity's is its ``event_id``; a metric's is
  ``<dimension_id>:<model>:<external_id>:<date>``. Two in-segment profiles with one key: the
  most recently updated is sent, the others skipped (duplicate), so a bulk request never
  names a record twice.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from hull_planhat_pipelines.settings import (
    ActivityQuerySettings,
    AttributeMap,
    MetricSettings,
    Settings,
)
from hull_planhat_pipelines.sync.batching import is_missing, jsonable
from hull_planhat_pipelines.sync.fingerprints import (
    PAYLOAD_COLUMNS,
    VOLATILE_FIELDS,
    fields_text,
    fingerprint,
    parse_fields,
    select_changed,
    utc_timestamp,
)
from hull_planhat_pipelines.sync.log import SyncEvent
from hull_planhat_pipelines.sync.operator_sql import lock_down, run_select

COMPANIES = "companies"
ENDUSERS = "endusers"
ACTIVITIES = "activities"
METRICS = "metrics"
"""Target names, equal to the delivery engine's ``DeliveryTarget`` names."""

NO_EXTERNAL_ID = "No external_id"
INVALID_OWNER = "Invalid Owner ID"
INVALID_CO_OWNER = "Invalid Co-Owner ID"
DUPLICATE_EXTERNAL_ID = "Duplicate external_id"
NO_USER_IDENTITY = "Neither email nor external id"
ACCOUNT_NO_EXTERNAL_ID = "Account has no external_id"
DUPLICATE_USER_KEY = "Duplicate email or external id"
EVENT_NO_USER_IDENTITY = "User has neither email nor external id"
EVENT_NO_DATE = "Event has no occurred_at"
METRIC_NOT_A_NUMBER = "Value is not a number"
METRIC_BAD_DATE = "Invalid date"
METRIC_DUPLICATE = "Duplicate row for this key"
METRIC_QUERY_FAILED = "Metric query failed"

COMPANY_IDENTITY = frozenset({"externalId", "owner", "coOwner"})
ENDUSER_IDENTITY = frozenset({"email", "externalId", "companyExternalId", "companyId"})
DEFAULT_NAME_SOURCES: tuple[tuple[str, ...], ...] = (
    ("copper_person/name",),
    ("copper_lead/name",),
    ("planhat/name",),
    ("planhat/first_name", "planhat/last_name"),
)
"""Where an activity's ``name`` comes from when the enduser mapping names no ``name``,
``firstName`` or ``lastName`` source: the first of these holding a value."""
METRIC_COLUMNS = ("external_id", "value")

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
        return _number(value["amount"])
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _number(value: Any) -> float | None:
    """A finite float, or None: bools are not numbers; numeric text is (``"12.5"``)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _put(payload: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
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
            _put(payload, field.path, value)
            present.append(field.dotted)
    return payload, present


# -- frame helpers ---------------------------------------------------------------------------
def _attributes(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        parsed = json.loads(value) if value else {}
        return parsed if isinstance(parsed, dict) else {}
    return dict(value) if isinstance(value, Mapping) else {}


def _text(value: Any) -> str | None:
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


def _column(frame: pd.DataFrame, name: str) -> list[Any]:
    return frame[name].tolist() if name in frame.columns else [None] * len(frame)


def _columns(frame: pd.DataFrame, names: Sequence[str]) -> Iterable[tuple[Any, ...]]:
    """Rows as plain tuples of ``names`` (a missing column reads as None)."""
    return zip(*(_column(frame, name) for name in names), strict=True)


def _utc_stamps(values: pd.Series) -> pd.Series:
    """Timestamps in UTC; text in any ISO form is parsed, what is no time becomes NaT."""
    if pd.api.types.is_datetime64_any_dtype(values):
        return pd.to_datetime(values, utc=True)
    return pd.to_datetime(values, utc=True, errors="coerce", format="mixed")


def _iso_ms(values: pd.Series) -> pd.Series:
    """UTC timestamps as ISO-8601 with milliseconds and ``Z``; None where missing."""
    stamps = _utc_stamps(values)
    text = stamps.dt.strftime("%Y-%m-%dT%H:%M:%S.%f").str[:-3] + "Z"
    return text.astype(object).where(stamps.notna(), None)


def _skip(event: str, object_type: str, object_id: Any, reason: str, **details: Any) -> SyncEvent:
    clean = {k: v for k, v in details.items() if v is not None}
    return SyncEvent(
        event=event,
        object_type=object_type,
        object_id=None if object_id is None else str(object_id),
        reason=reason,
        details=clean,
    )


def _empty_payloads(extra: Sequence[str]) -> pd.DataFrame:
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
        _skip(event, object_type, object_id, reason, key=key, sent=winners[key])
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
        return _empty_payloads(extra), 0
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
            _put(payload, paths[dotted], None)


def _updated_rank(frame: pd.DataFrame) -> np.ndarray:
    """0 for the most recently updated row, ascending; rows without a time come last."""
    if "updated_at" not in frame.columns:
        return np.zeros(len(frame), dtype="int64")
    stamps = pd.to_datetime(frame["updated_at"], utc=True, errors="coerce")
    ranks = stamps.rank(method="first", ascending=False, na_option="bottom")
    return ranks.to_numpy(dtype="int64")


def _progress(event: str, **counts: Any) -> SyncEvent:
    return SyncEvent(event=event, details=counts)


# -- companies -------------------------------------------------------------------------------
def valid_owner_ids(planhat_users: pd.DataFrame | None) -> frozenset[str]:
    """Planhat user ids an owner may hold: every user not ``removed`` (inactive ones too)."""
    if planhat_users is None or planhat_users.empty:
        return frozenset()
    removed = planhat_users.get("removed", pd.Series(False, index=planhat_users.index))
    removed = removed.astype("boolean").fillna(False).to_numpy(dtype=bool)
    ids = planhat_users.loc[~removed, "_id"]
    return frozenset(str(value) for value in ids if _text(value) is not None)


def _owner(
    attributes: Mapping[str, Any], attribute: str | None, valid: frozenset[str]
) -> tuple[str | None, bool]:
    """(owner id to send, valid?) from the owner attribute; no value is valid (no field)."""
    if attribute is None:
        return None, True
    value = _text(attributes.get(attribute))
    if value is None:
        return None, True
    return value, value in valid


def company_payloads(
    accounts: pd.DataFrame,
    planhat_users: pd.DataFrame | None,
    settings: Settings,
    fingerprints: pd.DataFrame | None,
    *,
    force: bool = False,
) -> Payloads:
    """Company upserts for the in-segment accounts whose mapped content changed.

    Columns: ``PAYLOAD_COLUMNS`` + ``external_id``; ``key`` is the external id.
    """
    config = settings.planhat
    fields = compile_fields(config.account_attributes, reserved=COMPANY_IDENTITY)
    valid = valid_owner_ids(planhat_users)
    inside = accounts.loc[in_segments(accounts["segments"], config.company_segments)]
    events: list[SyncEvent] = []
    rows: list[dict[str, Any]] = []
    ranks = _updated_rank(inside)
    for hull_id, external_id, raw, rank in zip(
        _column(inside, "hull_id"),
        _column(inside, "external_id"),
        _column(inside, "attributes"),
        ranks,
        strict=True,
    ):
        key = _text(external_id)
        if key is None:
            events.append(_skip("outgoing.account.skip", "account", hull_id, NO_EXTERNAL_ID))
            continue
        attributes = _attributes(raw)
        owner, owner_ok = _owner(attributes, config.owner_attribute, valid)
        co_owner, co_owner_ok = _owner(attributes, config.co_owner_attribute, valid)
        if not (owner_ok and co_owner_ok):
            reason = INVALID_OWNER if not owner_ok else INVALID_CO_OWNER
            events.append(
                _skip(
                    "outgoing.account.skip",
                    "account",
                    hull_id,
                    reason,
                    external_id=key,
                    owner=owner,
                    co_owner=co_owner,
                )
            )
            continue
        payload, present = map_attributes(attributes, fields)
        payload["externalId"] = key
        if owner is not None:
            payload["owner"] = owner
        if co_owner is not None:
            payload["coOwner"] = co_owner
        rows.append(
            {
                "key": key,
                "hull_id": hull_id,
                "payload": payload,
                "present": present,
                "order": rank,
                "external_id": key,
            }
        )
    candidates, duplicates = _dedupe(
        _Candidates(("external_id",), rows).frame(),
        "outgoing.account.skip",
        "account",
        DUPLICATE_EXTERNAL_ID,
    )
    events += duplicates
    payloads, unchanged = _finish(
        candidates, fingerprints, COMPANIES, fields, force=force, extra=("external_id",)
    )
    events.append(
        _progress(
            "outgoing.account.progress",
            accounts=len(accounts),
            in_segment=len(inside),
            skipped=len(events),
            unchanged=unchanged,
            selected=len(payloads),
            forced=force,
        )
    )
    return payloads, events


# -- endusers --------------------------------------------------------------------------------
def enduser_key(email: str | None, external_id: str | None) -> str | None:
    """``external_id:<id>`` when there is one (Planhat matches it first), else ``email:<email>``."""
    if external_id is not None:
        return f"external_id:{external_id}"
    return f"email:{email}" if email is not None else None


def _account_external_ids(users: pd.DataFrame, accounts: pd.DataFrame | None) -> list[Any]:
    """Each user's account external id (None: no account, unknown account, or none set)."""
    if accounts is None or accounts.empty or "account_hull_id" not in users.columns:
        return [None] * len(users)
    by_hull_id = accounts.drop_duplicates("hull_id").set_index("hull_id")["external_id"]
    return users["account_hull_id"].map(by_hull_id).tolist()


def enduser_payloads(
    users: pd.DataFrame,
    accounts: pd.DataFrame | None,
    settings: Settings,
    fingerprints: pd.DataFrame | None,
    *,
    force: bool = False,
) -> Payloads:
    """Enduser upserts for the in-segment users whose mapped content changed.

    Columns: ``PAYLOAD_COLUMNS`` + ``email``, ``external_id``, ``company_external_id``.
    A user whose account is missing or has no external id is skipped: Planhat silently drops
    an enduser it cannot tie to a company.
    """
    config = settings.planhat
    fields = compile_fields(config.user_attributes, reserved=ENDUSER_IDENTITY)
    inside = users.loc[in_segments(users["segments"], config.contact_segments)]
    extra = ("email", "external_id", "company_external_id")
    events: list[SyncEvent] = []
    rows: list[dict[str, Any]] = []
    for hull_id, email_value, external_value, company_value, raw, rank in zip(
        _column(inside, "hull_id"),
        _column(inside, "email"),
        _column(inside, "external_id"),
        _account_external_ids(inside, accounts),
        _column(inside, "attributes"),
        _updated_rank(inside),
        strict=True,
    ):
        email, external_id = _text(email_value), _text(external_value)
        company = _text(company_value)
        key = enduser_key(email, external_id)
        if key is None:
            events.append(_skip("outgoing.user.skip", "user", hull_id, NO_USER_IDENTITY))
            continue
        if company is None:
            events.append(
                _skip("outgoing.user.skip", "user", hull_id, ACCOUNT_NO_EXTERNAL_ID, key=key)
            )
            continue
        payload, present = map_attributes(_attributes(raw), fields)
        identity = {"email": email, "externalId": external_id, "companyExternalId": company}
        payload.update({k: v for k, v in identity.items() if v is not None})
        rows.append(
            {
                "key": key,
                "hull_id": hull_id,
                "payload": payload,
                "present": present,
                "order": rank,
                "email": email,
                "external_id": external_id,
                "company_external_id": company,
            }
        )
    candidates, duplicates = _dedupe(
        _Candidates(extra, rows).frame(), "outgoing.user.skip", "user", DUPLICATE_USER_KEY
    )
    events += duplicates
    payloads, unchanged = _finish(
        candidates, fingerprints, ENDUSERS, fields, force=force, extra=extra
    )
    events.append(
        _progress(
            "outgoing.user.progress",
            users=len(users),
            in_segment=len(inside),
            skipped=len(events),
            unchanged=unchanged,
            selected=len(payloads),
            forced=force,
        )
    )
    return payloads, events


def payloads_as_json(payloads: pd.DataFrame) -> pd.DataFrame:
    """A copy with ``payload`` as JSON text, for storing the frame as a table.

    A DuckDB table built from a column of dicts stores their Python repr, which is not JSON;
    JSON text is stored as is and the delivery engine reads it back (nulls kept: they clear).
    """
    text = [
        p
        if isinstance(p, str)
        else json.dumps(jsonable(p), ensure_ascii=False, separators=(",", ":"))
        for p in payloads["payload"]
    ]
    return payloads.assign(payload=pd.Series(text, index=payloads.index, dtype=object))


# -- user activities -------------------------------------------------------------------------
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
        parts = [_text(attributes.get(a)) for a in source]
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
                frame = frame.loc[frame["target"] == ACTIVITIES]
            values = frame["key"]
        return {str(v) for v in values if _text(v) is not None}
    return {str(v) for v in sent_event_ids if _text(v) is not None}


def _people(
    users: pd.DataFrame, accounts: pd.DataFrame | None, segments: Collection[str]
) -> pd.DataFrame:
    """In-segment users by ``hull_id``: the identity and name an activity carries."""
    people = users.loc[in_segments(users["segments"], segments)]
    people = people.drop_duplicates("hull_id")
    columns = {
        "user_hull_id": _column(people, "hull_id"),
        "_email": [_text(v) for v in _column(people, "email")],
        "_external_id": [_text(v) for v in _column(people, "external_id")],
        "_company": [_text(v) for v in _account_external_ids(people, accounts)],
        "_attributes": _column(people, "attributes"),
    }
    return pd.DataFrame({name: pd.Series(values, dtype=object) for name, values in columns.items()})


def activity_payloads(
    events: pd.DataFrame,
    users: pd.DataFrame,
    accounts: pd.DataFrame | None,
    settings: Settings,
    sent_event_ids: SentEventIds,
) -> Payloads:
    """User activities for tracked events of in-segment users, each event sent once.

    Columns: ``PAYLOAD_COLUMNS`` + ``user_hull_id``, ``occurred_at``; ``key`` is the event id
    (advance it like any fingerprint, then pass those rows back as ``sent_event_ids``).
    Events are ordered by time. Untracked names, repeated ids, events already sent, unknown
    users and users outside the contact segments are counted in the progress event, not
    logged one by one.
    """
    config = settings.planhat
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
    selected = selected.assign(date=_iso_ms(selected["occurred_at"]))
    selected = selected.sort_values(["occurred_at", "event_id"], kind="stable")
    skips, rows = _activity_rows(selected, name_sources(config.user_attributes))
    payloads = pd.DataFrame(rows, columns=[*PAYLOAD_COLUMNS, *extra])
    if payloads.empty:
        payloads = _empty_payloads(extra)
    skips.append(
        _progress(
            "outgoing.event.progress",
            events=len(events),
            not_tracked=int((~is_tracked).sum()),
            repeated=int(repeated.sum()),
            already_sent=int(already.sum()),
            not_in_segment=len(fresh) - len(selected),
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
    for row in _columns(selected, columns):
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
            skips.append(_skip("outgoing.event.skip", "event", event_id, reason, user_hull_id=user))
            continue
        if user not in names:
            names[user] = display_name(_attributes(raw), sources)
        item: dict[str, Any] = {"action": action, "info": _attributes(properties), "date": date}
        optional = {
            "email": email,
            "externalId": external_id,
            "name": names[user],
            "companyExternalId": company,
        }
        item.update({k: v for k, v in optional.items() if v is not None})
        rows.append(
            {
                "target": ACTIVITIES,
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


def sql_activity_payloads(
    conn: duckdb.DuckDBPyConnection,
    queries: Sequence[ActivityQuerySettings],
    sent_event_ids: SentEventIds,
) -> Payloads:
    """User activities from configured SQL, each ``activity_id`` sent once (key
    ``sql:<query>:<activity_id>``). An item names its enduser by ``email`` or, without one, by
    ``euExtId``; ``count`` says how many times the action happened. A failing query is logged
    (``outgoing.event.error``) and the others still go."""
    extra = ("user_hull_id", "occurred_at")
    sent = sent_ids(sent_event_ids)
    rows: list[dict[str, Any]] = []
    events: list[SyncEvent] = []
    for query in queries:
        try:
            frame = run_select(lock_down(conn), query.sql, f"activity query {query.name}")
            missing = [c for c in ACTIVITY_SQL_REQUIRED if c not in frame.columns]
            if missing:
                raise ValueError(f"the query has no column {', '.join(missing)}")
        except (duckdb.Error, ValueError) as exc:
            events.append(
                SyncEvent(
                    event="outgoing.event.error",
                    object_type="activity_query",
                    object_id=query.name,
                    reason=ACTIVITY_QUERY_FAILED,
                    details={"error": str(exc).splitlines()[0][:300]},
                )
            )
            continue
        dates = _iso_ms(frame["date"]).tolist() if "date" in frame.columns else [None] * len(frame)
        for record, date in zip(frame.to_dict("records"), dates, strict=True):
            cell = {k: jsonable(v) for k, v in record.items()}
            key = f"sql:{query.name}:{cell['activity_id']}"
            if key in sent:
                continue
            email, eu_ext_id = cell.get("email"), cell.get("eu_ext_id")
            if email in (None, "") and eu_ext_id in (None, ""):
                events.append(_skip("outgoing.event.skip", "event", key, ACTIVITY_NO_IDENTITY))
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
                    "target": ACTIVITIES,
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
    return (payloads if not payloads.empty else _empty_payloads(extra)), events


# -- metrics ---------------------------------------------------------------------------------
def _metric_event(model: str, kind: str) -> str:
    subject = {"Company": "account", "EndUser": "user"}.get(model, "job")
    return f"outgoing.{subject}.{kind}"


def _metric_dates(values: pd.Series, default: str) -> list[str | None]:
    """ISO dates with ms and ``Z`` (midnight for a plain date); a missing cell takes
    ``default``; None where the cell holds something that is no date."""
    text = _iso_ms(values).tolist()
    missing = [is_missing(v) or (isinstance(v, str) and not v.strip()) for v in values]
    return [default if gone else iso for iso, gone in zip(text, missing, strict=True)]


def metric_payloads(
    rows: pd.DataFrame,
    metric: MetricSettings,
    now: dt.datetime,
    *,
    fingerprints: pd.DataFrame | None = None,
    force: bool = False,
) -> Payloads:
    """Dimension data items from one metric's query rows (``external_id, value[, date]``).

    ``date`` defaults to today (UTC midnight), so a rerun the same day has the same key.
    With ``fingerprints`` only items whose value changed since their last delivery are kept
    (a metric re-sent unchanged every run would pile up data points). Columns:
    ``PAYLOAD_COLUMNS`` + ``dimension_id``, ``model``, ``external_id``, ``date``, ``value``.
    """
    extra = ("dimension_id", "model", "external_id", "date", "value")
    missing = [c for c in METRIC_COLUMNS if c not in rows.columns]
    if missing:
        raise ValueError(f"metric {metric.dimension_id!r}: query lacks {', '.join(missing)}")
    today = utc_timestamp(now).normalize()
    default_date = today.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    dates = _metric_dates(
        rows["date"] if "date" in rows.columns else pd.Series([None] * len(rows)),
        default_date,
    )
    skip_event = _metric_event(metric.model, "skip")
    events: list[SyncEvent] = []
    candidates: list[dict[str, Any]] = []
    for position, (external_value, raw_value, date) in enumerate(
        zip(rows["external_id"].tolist(), rows["value"].tolist(), dates, strict=True)
    ):
        external_id = _text(external_value)
        value = _number(raw_value)
        problem = (
            NO_EXTERNAL_ID
            if external_id is None
            else METRIC_NOT_A_NUMBER
            if value is None
            else METRIC_BAD_DATE
            if date is None
            else None
        )
        if problem is not None:
            events.append(
                _skip(
                    skip_event,
                    "metric",
                    external_id,
                    problem,
                    dimension_id=metric.dimension_id,
                    model=metric.model,
                    value=None if value is not None else repr(raw_value)[:100],
                )
            )
            continue
        item = {
            "dimensionId": metric.dimension_id,
            "value": value,
            "externalId": external_id,
            "model": metric.model,
            "date": date,
        }
        candidates.append(
            {
                "key": f"{metric.dimension_id}:{metric.model}:{external_id}:{date}",
                "hull_id": None,
                "payload": item,
                "present": [],
                "order": position,
                "dimension_id": metric.dimension_id,
                "model": metric.model,
                "external_id": external_id,
                "date": date,
                "value": value,
            }
        )
    frame, duplicates = _dedupe(
        _Candidates(extra, candidates).frame(),
        skip_event,
        "metric",
        METRIC_DUPLICATE,
        id_column="external_id",
    )
    events += duplicates
    payloads, unchanged = _finish(frame, fingerprints, METRICS, (), force=force, extra=extra)
    events.append(
        _progress(
            _metric_event(metric.model, "progress"),
            dimension_id=metric.dimension_id,
            model=metric.model,
            rows=len(rows),
            skipped=len(events),
            unchanged=unchanged,
            selected=len(payloads),
        )
    )
    return payloads, events


def run_metric_sql(conn: duckdb.DuckDBPyConnection, sql: str) -> pd.DataFrame:
    """A metric query's rows over the caller's connection: ``external_id``, ``value`` and
    ``date`` when the query has one. A ValueError names missing columns."""
    frame = run_select(lock_down(conn), sql, "metric query")
    missing = [c for c in METRIC_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"the query has no column {', '.join(missing)}")
    columns = [c for c in (*METRIC_COLUMNS, "date") if c in frame.columns]
    return frame[columns]


def all_metric_payloads(
    conn: duckdb.DuckDBPyConnection,
    metrics: Sequence[MetricSettings],
    now: dt.datetime,
    *,
    fingerprints: pd.DataFrame | None = None,
    force: bool = False,
) -> Payloads:
    """Every configured metric: one failing query is logged (``outgoing.*.error``) and the
    others still go."""
    frames: list[pd.DataFrame] = []
    events: list[SyncEvent] = []
    for metric in metrics:
        try:
            rows = run_metric_sql(conn, metric.sql)
        except (duckdb.Error, ValueError) as exc:
            events.append(
                SyncEvent(
                    event=_metric_event(metric.model, "error"),
                    object_type="metric",
                    object_id=metric.dimension_id,
                    reason=METRIC_QUERY_FAILED,
                    details={"error": str(exc).splitlines()[0][:300], "model": metric.model},
                )
            )
            continue
        payloads, skipped = metric_payloads(
            rows, metric, now, fingerprints=fingerprints, force=force
        )
        frames.append(payloads)
        events += skipped
    if not frames:
        return _empty_payloads(("dimension_id", "model", "external_id", "date", "value")), events
    return pd.concat(frames, ignore_index=True), events


COMPANY_NOT_IN_PLANHAT = "Account not in Planhat"


def drop_unknown_companies(payloads: pd.DataFrame, known_company_ids: Collection[str]) -> Payloads:
    """Endusers whose company Planhat does not have, and is not being sent, are skipped.

    Planhat silently ignores an enduser it cannot tie to a company; sent anyway, such a record
    is never confirmed and would be retried by every run.
    """
    if payloads.empty:
        return payloads, []
    known = {str(k) for k in known_company_ids}
    keep = payloads["company_external_id"].astype("string").isin(known).fillna(False).to_numpy()
    events = [
        _skip(
            "outgoing.user.skip",
            "user",
            row.hull_id,
            COMPANY_NOT_IN_PLANHAT,
            company_external_id=row.company_external_id,
        )
        for row in payloads.loc[~keep].itertuples(index=False)
    ]
    return payloads.loc[keep].reset_index(drop=True), events
