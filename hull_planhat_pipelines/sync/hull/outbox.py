"""What an applied sync forwards to a Hull firehose, as rows of an outbox (pure).

The outbox is written in the same transaction that applies the changes, and rows leave it only
once the firehose took their batch: a firehose that is down loses nothing, and a batch sent
twice changes nothing (traits are idempotent; a track is keyed by its event_id). A link is a row
of its own (kind ``link``): on the wire, account-subject ``traits {}`` claiming both profiles.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from hull_planhat_pipelines.sync.canonical import canonical_json

OUTBOX_COLUMNS = [
    "message_key",
    "kind",
    "user_claims",
    "account_claims",
    "body",
    "revision",
]
"""``kind``: user_traits, account_traits, link, track; claims and body are JSON text."""


def empty_outbox() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype="string") for c in OUTBOX_COLUMNS})


def _claims(row: Any, kind: str) -> dict[str, Any]:
    ids = row.anonymous_ids if row.anonymous_ids is not None else []
    claims = {
        ("email" if kind == "user" else "domain"): row.email if kind == "user" else row.domain,
        "external_id": row.external_id,
        "anonymous_id": next(iter(ids), None),
    }
    return {k: v for k, v in claims.items() if isinstance(v, str) and v}


def _claims_by_id(store: pd.DataFrame, kind: str) -> dict[str, dict[str, Any]]:
    if store is None or store.empty:
        return {}
    return {row.hull_id: _claims(row, kind) for row in store.itertuples(index=False)}


def _traits(
    upserts: pd.DataFrame, claims: dict[str, dict[str, Any]], kind: str, revision: str
) -> list[dict[str, Any]]:
    rows = []
    for hull_id, group in upserts.groupby("hull_id", sort=True):
        attributes = {
            a: (None if v is None else json.loads(v))
            for a, v in zip(group["attribute"], group["value"], strict=True)
        }
        who = claims.get(hull_id)
        if not who:
            continue
        rows.append(
            {
                "message_key": f"{kind}_traits:{hull_id}",
                "kind": f"{kind}_traits",
                "user_claims": json.dumps(who) if kind == "user" else None,
                "account_claims": json.dumps(who) if kind == "account" else None,
                "body": canonical_json(attributes),
                "revision": revision,
            }
        )
    return rows


def outbox_rows(
    user_upserts: pd.DataFrame,
    account_upserts: pd.DataFrame,
    links: pd.DataFrame,
    events: pd.DataFrame,
    users: pd.DataFrame,
    accounts: pd.DataFrame,
    *,
    revision: str,
) -> pd.DataFrame:
    """One message per changed profile (its changed attributes), link and new or edited event.

    Profiles are named by the claims of the store after the changes were applied.
    """
    user_claims = _claims_by_id(users, "user")
    account_claims = _claims_by_id(accounts, "account")
    rows = _traits(user_upserts, user_claims, "user", revision)
    rows += _traits(account_upserts, account_claims, "account", revision)
    for link in links.itertuples(index=False):
        user, account = user_claims.get(link.user_hull_id), account_claims.get(link.account_hull_id)
        if user and account:
            rows.append(
                {
                    "message_key": f"link:{link.user_hull_id}:{link.account_hull_id}",
                    "kind": "link",
                    "user_claims": json.dumps(user),
                    "account_claims": json.dumps(account),
                    "body": "{}",
                    "revision": revision,
                }
            )
    for event in events.itertuples(index=False):
        user = user_claims.get(event.user_hull_id)
        if not user:
            continue
        occurred = pd.Timestamp(event.occurred_at)
        body = {
            "event_id": event.event_id,
            "name": event.name,
            "properties": json.loads(event.properties) if event.properties else {},
            "occurred_at": occurred.isoformat() if not pd.isna(occurred) else None,
            "source": event.source,
        }
        rows.append(
            {
                "message_key": f"track:{event.event_id}",
                "kind": "track",
                "user_claims": json.dumps(user),
                "account_claims": None,
                "body": canonical_json(body),
                "revision": revision,
            }
        )
    if not rows:
        return empty_outbox()
    return pd.DataFrame(rows, columns=OUTBOX_COLUMNS).astype("string")
