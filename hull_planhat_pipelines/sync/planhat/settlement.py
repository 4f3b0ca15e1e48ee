"""Settling bulk-upsert items Planhat's answer did not name, against what Planhat holds.

Planhat's bulk answer names created and updated records by ``_id`` only, and silently drops an
enduser whose company it does not have: when its counts fall short, the items it did not
account for are ``unconfirmed``. They are not re-sent blindly; the next delivery, after a newer
Planhat snapshot, looks each one up there:

- written: a record answering to its key was written after the attempt began (its
  ``updatedAt``, which Planhat bumps on every write), and the content we would send is what
  was sent: ``confirmed``, delivered, its fingerprint advances, nothing is sent;
- present but not written since: Planhat did not apply it (an update's record held the key
  before; so may another company's enduser with the same email): ``dropped`` as not applied,
  and sent again, as an absent one is;
- absent: ``dropped`` (logged with its reason) and sent again, at most ``max_retries`` times
  for the same content (drops of either kind count); after that it is skipped until its
  content changes or its company is delivered again;
- no snapshot newer than the attempt yet: held (neither sent nor settled) until there is one.

Presence alone never confirms: a false confirmation records content as delivered that Planhat
never took, and it would not be sent again; a needless resend is an idempotent upsert.

Pure: frames in, frames out.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import pandas as pd

from hull_planhat_pipelines.sync.log import SyncEvent

UNCONFIRMED = "unconfirmed"
DROPPED = "dropped"
MAX_DROPPED_RETRIES = 3
DROPPED_REASON = {
    "endusers": "Dropped by Planhat: company not in Planhat",
    "companies": "Dropped by Planhat: not in its records after the upsert",
}
ATTEMPT_WINDOW = pd.Timedelta(minutes=10)
"""How long before its delivery row (written once the answer came) a request may have been
applied: a bulk upsert's retries and timeouts fit well inside. A write older than that, or
older than the key's attempt before it, is not the attempt's."""
CLOCK_SLACK = pd.Timedelta(minutes=2)
"""How far after the attempt's row (our clock) Planhat's ``updatedAt`` (its clock) may stamp
the attempt's write. A later write is someone else's (a user's edit in Planhat, another
company's enduser with the same email): it proves nothing about the attempt."""
SETTLEMENT_STATUSES = frozenset({"confirmed", DROPPED})
"""Rows settlement writes itself (no request was made): never an attempt."""
NOT_APPLIED_REASON = "Not applied by Planhat: no record under its key was written after the upsert"
SKIPPED_REASON = "Dropped by Planhat {n} times: skipped until it or its account changes"


@dataclass
class Settlement:
    """What to do with one target's payload rows before sending."""

    send: pd.DataFrame
    """The payload rows to send now (index kept)."""
    confirmed: pd.DataFrame = field(default_factory=pd.DataFrame)
    """Payload rows found in Planhat: recorded as delivered, not sent."""
    dropped: pd.DataFrame = field(default_factory=pd.DataFrame)
    """Payload rows Planhat dropped (absent from it): recorded as failed, and sent again."""
    events: list[SyncEvent] = field(default_factory=list)
    not_applied: pd.DataFrame = field(default_factory=pd.DataFrame)
    """Payload rows whose key Planhat holds on a record not written since the attempt:
    recorded as dropped (``NOT_APPLIED_REASON``), and sent again."""


def settle(
    target: str,
    payloads: pd.DataFrame,
    history: pd.DataFrame,
    present: Collection[str],
    snapshot_at: pd.Timestamp | None,
    company_delivered_at: Mapping[str, pd.Timestamp] | None = None,
    *,
    written_at: Mapping[str, pd.Timestamp | None] | None = None,
    max_retries: int = MAX_DROPPED_RETRIES,
) -> Settlement:
    """Split ``payloads`` (``key``, ``fingerprint``, optional ``company_external_id``).

    ``history``: this target's delivery rows (``key``, ``status``, ``fingerprint``,
    ``delivered_at``: once the answer came); ``present``: keys the latest snapshot (taken
    at ``snapshot_at``) holds; ``written_at``: per present key, when Planhat last wrote a
    record answering to it (missing or None: unknown, never a confirmation);
    ``company_delivered_at``: when each company was last delivered (a company delivered after
    a drop resets the drop count of its endusers).
    """
    kind = "user" if target == "endusers" else "account"
    if payloads.empty or history.empty:
        return Settlement(payloads)
    ordered = history.sort_values("delivered_at", kind="stable")
    latest = ordered.drop_duplicates("key", keep="last").set_index("key")
    send, confirmed, dropped, not_applied = [], [], [], []
    events: list[SyncEvent] = []
    company_at = company_delivered_at or {}
    writes = written_at or {}
    for index, row in payloads.iterrows():
        key = str(row["key"])
        last = latest.loc[key] if key in latest.index else None
        if last is None or last["status"] not in (UNCONFIRMED, DROPPED):
            send.append(index)
            continue
        if snapshot_at is None or snapshot_at <= last["delivered_at"]:
            continue  # held: wait for a snapshot taken after the attempt
        held = key in present
        written = writes.get(key) if held else None
        if written is not None and _written_by_attempt(ordered, key, written):
            if last["fingerprint"] == row["fingerprint"]:
                confirmed.append(index)
            else:
                send.append(index)  # it landed, and has changed since: send the change
            continue
        since = company_at.get(str(row.get("company_external_id")))
        drops = ordered[
            (ordered["key"] == key)
            & (ordered["status"] == DROPPED)
            & (ordered["fingerprint"] == row["fingerprint"])
        ]
        if since is not None:
            drops = drops[drops["delivered_at"] > since]
        reason = NOT_APPLIED_REASON if held else DROPPED_REASON.get(target, "Dropped by Planhat")
        if len(drops) >= max_retries:
            events.append(
                SyncEvent(
                    event=f"outgoing.{kind}.skip",
                    object_type=target,
                    object_id=key,
                    reason=SKIPPED_REASON.format(n=len(drops)),
                )
            )
            continue
        (not_applied if held else dropped).append(index)
        send.append(index)
        events.append(
            SyncEvent(
                event=f"outgoing.{kind}.error", object_type=target, object_id=key, reason=reason
            )
        )
    return Settlement(
        payloads.loc[send],
        payloads.loc[confirmed],
        payloads.loc[dropped],
        events,
        payloads.loc[not_applied],
    )


def _written_by_attempt(ordered: pd.DataFrame, key: str, written: pd.Timestamp) -> bool:
    """Whether a write stamped ``written`` may be the key's latest attempt's: after it was
    sent (not before the key's attempt before it, whose answer had come back, nor
    ``ATTEMPT_WINDOW`` before the attempt's row) and not after its answer (``CLOCK_SLACK``).
    Settlement's own rows are not attempts: a drop committed just before a resend neither
    narrows the window nor stands for the request."""
    attempts = ordered.loc[
        (ordered["key"] == key) & ~ordered["status"].isin(SETTLEMENT_STATUSES), "delivered_at"
    ]
    if attempts.empty:
        return False
    attempt_at = attempts.iloc[-1]
    began = attempt_at - ATTEMPT_WINDOW
    if len(attempts) > 1:
        began = max(began, attempts.iloc[-2])
    return bool(began < written <= attempt_at + CLOCK_SLACK)
