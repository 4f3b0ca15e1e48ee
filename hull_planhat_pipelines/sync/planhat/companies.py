"""Hull accounts -> Planhat company upserts (key: the account's external id).

Only accounts in ``planhat.company_segments`` become companies; a company depends on its
account's segments alone. Owner and co-owner must be the ``_id`` of a Planhat user that is not
``removed``, otherwise the whole account is skipped without any request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from hull_planhat_pipelines.settings import Settings
from hull_planhat_pipelines.sync.log import SyncEvent
from hull_planhat_pipelines.sync.planhat import shared

INVALID_OWNER = "Invalid Owner ID"
INVALID_CO_OWNER = "Invalid Co-Owner ID"
DUPLICATE_EXTERNAL_ID = "Duplicate external_id"
OWNER_SKIPS = frozenset({INVALID_OWNER, INVALID_CO_OWNER})
"""Skips decided by the account's own row and the Planhat users alone (a duplicate's depends
on the other accounts sharing its key, a missing external id is never in the delivery seed)."""
COMPANY_IDENTITY = frozenset({"externalId", "owner", "coOwner"})


def valid_owner_ids(planhat_users: pd.DataFrame | None) -> frozenset[str]:
    """Planhat user ids an owner may hold: every user not ``removed`` (inactive ones too)."""
    if planhat_users is None or planhat_users.empty:
        return frozenset()
    removed = planhat_users.get("removed", pd.Series(False, index=planhat_users.index))
    removed = removed.astype("boolean").fillna(False).to_numpy(dtype=bool)
    ids = planhat_users.loc[~removed, "_id"]
    return frozenset(str(value) for value in ids if shared.as_text(value) is not None)


def _owner(
    attributes: Mapping[str, Any], attribute: str | None, valid: frozenset[str]
) -> tuple[str | None, bool]:
    """(owner id to send, valid?) from the owner attribute; no value is valid (no field)."""
    if attribute is None:
        return None, True
    value = shared.as_text(attributes.get(attribute))
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
) -> shared.Payloads:
    """Company upserts for the in-segment accounts whose mapped content changed.

    Columns: ``PAYLOAD_COLUMNS`` + ``external_id``; ``key`` is the external id.
    """
    config = settings.planhat
    fields = shared.compile_fields(config.account_attributes, reserved=COMPANY_IDENTITY)
    valid = valid_owner_ids(planhat_users)
    inside = accounts.loc[shared.in_segments(accounts["segments"], config.company_segments)]
    events: list[SyncEvent] = []
    rows: list[dict[str, Any]] = []
    ranks = shared.updated_rank(inside)
    for hull_id, external_id, raw, rank in zip(
        shared.column_values(inside, "hull_id"),
        shared.column_values(inside, "external_id"),
        shared.column_values(inside, "attributes"),
        ranks,
        strict=True,
    ):
        key = shared.as_text(external_id)
        if key is None:
            events.append(
                shared.skip_event(
                    "outgoing.account.skip", "account", hull_id, shared.NO_EXTERNAL_ID
                )
            )
            continue
        attributes = shared.parse_attributes(raw)
        owner, owner_ok = _owner(attributes, config.owner_attribute, valid)
        co_owner, co_owner_ok = _owner(attributes, config.co_owner_attribute, valid)
        if not (owner_ok and co_owner_ok):
            reason = INVALID_OWNER if not owner_ok else INVALID_CO_OWNER
            events.append(
                shared.skip_event(
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
        payload, present = shared.map_attributes(attributes, fields)
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
    return shared.select_upserts(
        rows,
        events,
        target=shared.COMPANIES,
        subject="outgoing.account",
        object_type="account",
        duplicate=DUPLICATE_EXTERNAL_ID,
        extra=("external_id",),
        fields=fields,
        fingerprints=fingerprints,
        force=force,
        counts={"accounts": len(accounts), "in_segment": len(inside), "forced": force},
    )
