"""Hull users -> Planhat enduser upserts (key: ``external_id:<id>``, else ``email:<email>``).

Only users in ``planhat.contact_segments`` become endusers. Each carries ``email`` and/or
``externalId`` and ``companyExternalId`` (its account's external id): Planhat silently drops an
enduser it cannot tie to a company, so such users are skipped here.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Mapping
from typing import Any

import pandas as pd

from hull_planhat_pipelines.settings import Settings
from hull_planhat_pipelines.sync.hull.model import PLANHAT_PREFIX
from hull_planhat_pipelines.sync.log import SyncEvent
from hull_planhat_pipelines.sync.planhat import shared
from hull_planhat_pipelines.sync.planhat.fingerprints import (
    empty_fingerprints,
    fields_text,
    parse_fields,
)

NO_USER_IDENTITY = "Neither email nor external id"
ACCOUNT_NO_EXTERNAL_ID = "Account has no external_id"
DUPLICATE_USER_KEY = "Duplicate email or external id"
ENDUSER_IDENTITY = frozenset({"email", "externalId", "companyExternalId", "companyId"})
EXTERNAL_ID_KEY = "external_id:"
EMAIL_KEY = "email:"
"""The prefixes of an enduser's payload keys, one per kind of identity."""


def enduser_key(email: str | None, external_id: str | None) -> str | None:
    """``external_id:<id>`` when there is one (Planhat matches it first), else ``email:<email>``."""
    if external_id is not None:
        return f"{EXTERNAL_ID_KEY}{external_id}"
    return f"{EMAIL_KEY}{email}" if email is not None else None


def account_external_ids(users: pd.DataFrame, accounts: pd.DataFrame | None) -> list[Any]:
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
) -> shared.Payloads:
    """Enduser upserts for the in-segment users whose mapped content changed.

    Columns: ``PAYLOAD_COLUMNS`` + ``email``, ``external_id``, ``company_external_id``.
    A user whose account is missing or has no external id is skipped: Planhat silently drops
    an enduser it cannot tie to a company.
    """
    config = settings.planhat
    fields = shared.compile_fields(config.user_attributes, reserved=ENDUSER_IDENTITY)
    inside = users.loc[shared.in_segments(users["segments"], config.contact_segments)]
    extra = ("email", "external_id", "company_external_id")
    events: list[SyncEvent] = []
    rows: list[dict[str, Any]] = []
    for hull_id, email_value, external_value, company_value, raw, rank in zip(
        shared.column_values(inside, "hull_id"),
        shared.column_values(inside, "email"),
        shared.column_values(inside, "external_id"),
        account_external_ids(inside, accounts),
        shared.column_values(inside, "attributes"),
        shared.updated_rank(inside),
        strict=True,
    ):
        email, external_id = shared.as_text(email_value), shared.as_text(external_value)
        company = shared.as_text(company_value)
        key = enduser_key(email, external_id)
        if key is None:
            events.append(
                shared.skip_event("outgoing.user.skip", "user", hull_id, NO_USER_IDENTITY)
            )
            continue
        if company is None:
            events.append(
                shared.skip_event(
                    "outgoing.user.skip", "user", hull_id, ACCOUNT_NO_EXTERNAL_ID, key=key
                )
            )
            continue
        payload, present = shared.map_attributes(shared.parse_attributes(raw), fields)
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
    return shared.select_upserts(
        rows,
        events,
        target=shared.ENDUSERS,
        subject="outgoing.user",
        object_type="user",
        duplicate=DUPLICATE_USER_KEY,
        extra=extra,
        fields=fields,
        fingerprints=fingerprints,
        force=force,
        counts={"users": len(users), "in_segment": len(inside), "forced": force},
    )


PLANHAT_RECORD = PLANHAT_PREFIX
"""The anonymous id a profile holds for each Planhat record it was built from (its ``_id``)."""


def planhat_enduser_ids(users: pd.DataFrame) -> dict[str, str]:
    """Each user's Planhat enduser ``_id``, from its anonymous ids: only a user built from
    exactly one Planhat enduser (two would leave the choice to chance)."""
    found: dict[str, str] = {}
    if "anonymous_ids" not in users.columns:
        return found
    for hull_id, anonymous in zip(
        shared.column_values(users, "hull_id"), users["anonymous_ids"].tolist(), strict=True
    ):
        ids = {str(a)[len(PLANHAT_RECORD) :] for a in _listed(anonymous)}
        ids = {i for i in ids if i}
        if len(ids) == 1:
            found[str(hull_id)] = ids.pop()
    return found


def _listed(anonymous: Any) -> list[Any]:
    if anonymous is None or isinstance(anonymous, float):
        return []
    return [a for a in list(anonymous) if isinstance(a, str) and a.startswith(PLANHAT_RECORD)]


def addressed_by_id(payloads: pd.DataFrame, planhat_ids: dict[str, str]) -> pd.DataFrame:
    """The payloads of ``planhat_ids``' users carry that Planhat ``_id``: Planhat holds them
    under another key (their email or external id changed since we sent it), and matched by
    ``_id`` it updates that enduser instead of creating a second one. Added after the
    fingerprint was taken: what is compared next time is the content, not how it was
    addressed."""
    if payloads.empty or not planhat_ids:
        return payloads
    out = payloads.copy()
    out["payload"] = [
        {**payload, "_id": planhat_ids[str(hull_id)]}
        if str(hull_id) in planhat_ids and isinstance(payload, dict)
        else payload
        for hull_id, payload in zip(out["hull_id"], out["payload"], strict=True)
    ]
    return out


def held_under(
    moved: pd.DataFrame, snapshot_keys: Mapping[str, Collection[str]]
) -> dict[str, set[str]]:
    """Per user, the keys Planhat may hold its enduser under: those the latest snapshot shows
    (``snapshot_keys``) and, for a user addressed by ``_id`` (``moved``), the other keys it was
    sent under since."""
    held = {str(h): {str(k) for k in keys} for h, keys in snapshot_keys.items()}
    for hull_id, others in zip(moved["hull_id"], moved["other_keys"], strict=True):
        held.setdefault(str(hull_id), set()).update(str(k) for k in others)
    return held


def _identity(email: Any, external_id: Any) -> dict[str, str]:
    """The email and external id a payload gives its enduser, as keys (``email:``/``external_id:``
    prefixes), by kind; a kind the payload leaves out is not there."""
    out: dict[str, str] = {}
    if isinstance(email, str) and email.strip():
        out[EMAIL_KEY] = f"{EMAIL_KEY}{email.strip().lower()}"
    if isinstance(external_id, str) and external_id.strip():
        out[EXTERNAL_ID_KEY] = f"{EXTERNAL_ID_KEY}{external_id.strip()}"
    return out


MAX_SEND_ORDER = 10
"""Orders beyond this are not told apart: a chain of records each waiting for the next longer
than this (or a cycle) goes in the last order."""


_Row = tuple[str, str, Any, Any, Any]


def _rows(payloads: pd.DataFrame) -> list[_Row]:
    """``(hull_id, key, email, external_id, payload)`` per payload."""
    return list(
        zip(
            payloads["hull_id"].astype(str),
            payloads["key"].astype(str),
            payloads["email"],
            payloads["external_id"],
            payloads["payload"],
            strict=True,
        )
    )


def _left(rows: list[_Row], held: Mapping[str, Collection[str]]) -> dict[str, set[str]]:
    """A key some users' endusers leave (their payload gives another value of its kind) ->
    those users."""
    left: dict[str, set[str]] = {}
    for hull_id, _key, email, external_id, _ in rows:
        gives = _identity(email, external_id)
        for other in held.get(hull_id, ()):
            kind = EMAIL_KEY if str(other).startswith(EMAIL_KEY) else EXTERNAL_ID_KEY
            if kind in gives and gives[kind] != other:
                left.setdefault(str(other), set()).add(hull_id)
    return left


def _matchable(
    rows: list[_Row], held: Mapping[str, Collection[str]]
) -> Iterator[tuple[str, set[str]]]:
    """Per record Planhat could match to another's enduser, the keys it could match by: not
    one addressed by ``_id``, nor one keyed by a key its own enduser answers to (Planhat
    matches those first)."""
    for hull_id, key, email, external_id, payload in rows:
        if isinstance(payload, dict) and "_id" in payload:
            continue
        if key in held.get(hull_id, ()):
            continue
        yield hull_id, {key, *_identity(email, external_id).values()}


def matchable_keys(payloads: pd.DataFrame) -> set[str]:
    """Every key Planhat could match one of ``payloads`` by (its key, email, external id)."""
    return (
        {k for _, keys in _matchable(_rows(payloads), {}) for k in keys} if len(payloads) else set()
    )


TAKEN_ENDUSER = "A Planhat enduser of another profile answers to its key"
"""Skip reason: sent, the record would be matched to that enduser and take it over."""


def not_taking_over(payloads: pd.DataFrame, held: Mapping[str, Collection[str]]) -> shared.Payloads:
    """``payloads`` without the records Planhat would match to the enduser of another profile
    that keeps the matching key: its user is not in the delivery, or its payload gives that
    enduser no other value of the key's kind (``held``: per user, of the delivery or not, the
    keys its enduser may be held under). Sent, such a record would take that enduser over (a
    new person given the address of someone whose rename is not in this delivery: its
    company unknown to Planhat, or out of the segments). Each is skipped with its reason,
    and judged again next run; a skipped user's enduser keeps its keys, so a record taking
    one of them is skipped too. A record the user's own rename frees is ordered after it
    instead (``after_movers``)."""
    if payloads.empty or not held:
        return payloads, []
    rows = _rows(payloads)
    holders: dict[str, set[str]] = {}
    for user, keys in held.items():
        for key in keys:
            holders.setdefault(str(key), set()).add(str(user))
    blocked: dict[str, tuple[str, str]] = {}
    while True:  # a skipped user leaves nothing: who takes its key is judged again
        sent = [row for row in rows if row[0] not in blocked]
        left = _left(sent, held)
        more = {}
        for hull_id, keys in _matchable(sent, held):
            for key in sorted(keys):
                keeping = holders.get(key, set()) - left.get(key, set()) - {hull_id}
                if keeping:
                    more[hull_id] = (key, min(keeping))
                    break
        if not more:
            break
        blocked |= more
    if not blocked:
        return payloads, []
    skip = payloads["hull_id"].astype(str).isin(blocked).to_numpy()
    events = [
        shared.skip_event(
            "outgoing.user.skip",
            "user",
            hull_id,
            TAKEN_ENDUSER,
            key=blocked[str(hull_id)][0],
            held_by=blocked[str(hull_id)][1],
        )
        for hull_id in payloads.loc[skip, "hull_id"]
    ]
    return payloads.loc[~skip].reset_index(drop=True), events


def after_movers(payloads: pd.DataFrame, held: Mapping[str, Collection[str]]) -> pd.DataFrame:
    """``payloads`` with ``shared.SEND_ORDER``: a record not addressed by ``_id``, and not
    keyed by a key its own enduser answers to, that Planhat could match, by its email or
    external id, to the enduser of another user of the delivery whose payload gives that
    enduser another value of the same kind (``held``: per user, the keys its enduser may be held
    under, ``held_under``) goes one order after that user; the rest go first (0).

    A colleague given a person's old address, sent by email in the bulk that gives the person's
    enduser its new one (by ``_id``, or by an external id that did not change), would match
    that enduser if Planhat applied it first (the order it applies a bulk's items in is not
    documented): the person's enduser would take the colleague's content, then the person's
    new address, and the colleague would have no enduser. Sent in a later request, it finds
    the address free. A record Planhat matches first by a key of its own enduser (its ``_id``,
    or an external id that enduser holds) takes over nobody's. Sorted by order, stably; each
    record's ``shared.WAITS_FOR`` names the keys of those it follows."""
    out = payloads.assign(**{shared.SEND_ORDER: 0, shared.WAITS_FOR: "[]"})
    if payloads.empty or not held:
        return out
    rows = _rows(payloads)
    left = _left(rows, held)
    if not left:
        return out
    waits: dict[str, set[str]] = {}  # user -> the users whose enduser it must follow
    for hull_id, keys in _matchable(rows, held):
        owners = {o for k in keys for o in left.get(k, ()) if o != hull_id}
        if owners:
            waits[hull_id] = owners
    orders = dict.fromkeys(waits, 1)
    for _ in range(MAX_SEND_ORDER):  # one after the latest of those it waits for
        deeper = {
            h: min(MAX_SEND_ORDER, 1 + max(orders.get(o, 0) for o in owners))
            for h, owners in waits.items()
        }
        if deeper == orders:
            break
        orders = deeper
    out[shared.SEND_ORDER] = [orders.get(hull_id, 0) for hull_id, *_ in rows]
    key_of = {hull_id: key for hull_id, key, *_ in rows}
    out[shared.WAITS_FOR] = [
        json.dumps(sorted(key_of[o] for o in waits.get(hull_id, ()))) for hull_id, *_ in rows
    ]
    return out.sort_values(shared.SEND_ORDER, kind="stable").reset_index(drop=True)


def moved_fingerprints(
    fingerprints: pd.DataFrame, moved: pd.DataFrame, others: pd.DataFrame
) -> pd.DataFrame:
    """``fingerprints`` as the payloads of ``moved`` users must be compared with: each one's
    key (``key``) matches no payload, and its ``fields`` are those sent under it and under the
    ``other_keys`` its Planhat enduser was sent under since (whose content Planhat holds). The
    payload is sent as a change, and a field it no longer has is cleared in Planhat, whether
    the key is new (an email changed) or was delivered long ago (changed back). ``others``:
    the fingerprints of the other keys. The table itself is not changed: the delivery writes
    the key's row."""
    if moved.empty:
        return fingerprints
    other_fields = dict(zip(others["key"], others["fields"], strict=True)) if len(others) else {}
    wanted = {
        str(key): fields_text(
            frozenset().union(*(parse_fields(other_fields.get(k)) for k in other_keys))
        )
        for key, other_keys in zip(moved["key"], moved["other_keys"], strict=True)
    }
    out = fingerprints.copy() if "target" in fingerprints.columns else empty_fingerprints()
    rows = (out["target"] == "endusers").to_numpy() & out["key"].isin(wanted).to_numpy()
    out.loc[rows, "fingerprint"] = ""  # no payload's digest
    out.loc[rows, "fields"] = [
        fields_text(parse_fields(fields) | parse_fields(wanted[key]))
        for key, fields in zip(out.loc[rows, "key"], out.loc[rows, "fields"], strict=True)
    ]
    held = set(out.loc[rows, "key"])
    added = [key for key in wanted if key not in held]
    if not added:
        return out
    new = pd.DataFrame({column: [None] * len(added) for column in out.columns})
    new["target"], new["key"], new["fingerprint"] = "endusers", added, ""
    new["fields"] = [wanted[key] for key in added]
    new = new.astype(out.dtypes.to_dict())
    return pd.concat([out, new], ignore_index=True) if len(out) else new


COMPANY_NOT_IN_PLANHAT = "Account not in Planhat"


def keys_of_users(users: pd.DataFrame) -> dict[str, str]:
    """``hull_id`` -> the key each user would be sent under (users without one left out): the
    only fingerprints their payloads are compared with."""
    keys = (
        enduser_key(shared.as_text(email), shared.as_text(external_id))
        for email, external_id in zip(
            shared.column_values(users, "email"),
            shared.column_values(users, "external_id"),
            strict=True,
        )
    )
    return {
        str(hull_id): key
        for hull_id, key in zip(shared.column_values(users, "hull_id"), keys, strict=True)
        if key is not None
    }


def drop_unknown_companies(
    payloads: pd.DataFrame, known_company_ids: Collection[str]
) -> shared.Payloads:
    """Endusers whose company Planhat does not have, and is not being sent, are skipped.

    Planhat silently ignores an enduser it cannot tie to a company; sent anyway, such a record
    is never confirmed and would be retried by every run.
    """
    if payloads.empty:
        return payloads, []
    known = {str(k) for k in known_company_ids}
    keep = payloads["company_external_id"].astype("string").isin(known).fillna(False).to_numpy()
    events = [
        shared.skip_event(
            "outgoing.user.skip",
            "user",
            row.hull_id,
            COMPANY_NOT_IN_PLANHAT,
            company_external_id=row.company_external_id,
        )
        for row in payloads.loc[~keep].itertuples(index=False)
    ]
    return payloads.loc[keep].reset_index(drop=True), events
