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
from hull_planhat_pipelines.sync.planhat.shared import (
    COMPANIES,
    NO_EXTERNAL_ID,
    Candidates,
    Payloads,
    as_text,
    column_values,
    compile_fields,
    dedupe,
    finish,
    in_segments,
    map_attributes,
    parse_attributes,
    progress_event,
    skip_event,
    updated_rank,
)

INVALID_OWNER = "Invalid Owner ID"
INVALID_CO_OWNER = "Invalid Co-Owner ID"
DUPLICATE_EXTERNAL_ID = "Duplicate external_id"
COMPANY_IDENTITY = frozenset({"externalId", "owner", "coOwner"})


def valid_owner_ids(planhat_users: pd.DataFrame | None) -> frozenset[str]:
    """Planhat user ids an owner may hold: every user not ``removed`` (inactive ones too)."""
    if planhat_users is None or planhat_users.empty:
        return frozenset()
    removed = planhat_users.get("removed", pd.Series(False, index=planhat_users.index))
    removed = removed.astype("boolean").fillna(False).to_numpy(dtype=bool)
    ids = planhat_users.loc[~removed, "_id"]
    return frozenset(str(value) for value in ids if as_text(value) is not None)


def _owner(
    attributes: Mapping[str, Any], attribute: str | None, valid: frozenset[str]
) -> tuple[str | None, bool]:
    """(owner id to send, valid?) from the owner attribute; no value is valid (no field)."""
    if attribute is None:
        return None, True
    value = as_text(attributes.get(attribute))
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
    ranks = updated_rank(inside)
    for hull_id, external_id, raw, rank in zip(
        column_values(inside, "hull_id"),
        column_values(inside, "external_id"),
        column_values(inside, "attributes"),
        ranks,
        strict=True,
    ):
        key = as_text(external_id)
        if key is None:
            events.append(skip_event("outgoing.account.skip", "account", hull_id, NO_EXTERNAL_ID))
            continue
        attributes = parse_attributes(raw)
        owner, owner_ok = _owner(attributes, config.owner_attribute, valid)
        co_owner, co_owner_ok = _owner(attributes, config.co_owner_attribute, valid)
        if not (owner_ok and co_owner_ok):
            reason = INVALID_OWNER if not owner_ok else INVALID_CO_OWNER
            events.append(
                skip_event(
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
    candidates, duplicates = dedupe(
        Candidates(("external_id",), rows).frame(),
        "outgoing.account.skip",
        "account",
        DUPLICATE_EXTERNAL_ID,
    )
    events += duplicates
    payloads, unchanged = finish(
        candidates, fingerprints, COMPANIES, fields, force=force, extra=("external_id",)
    )
    events.append(
        progress_event(
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
