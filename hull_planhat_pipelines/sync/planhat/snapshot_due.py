"""Whether a sync takes a Planhat snapshot before it delivers (pure).

A snapshot is a full list by nature (every company and enduser, whatever changed), so it is
taken on the interval Planhat's fetch is configured for, as the daemon's sensor does, and not
on every sync. Planhat changes in two ways: people edit it (seen at the next due snapshot,
the documented delay), and the pipeline writes to it. Records the pipeline created, or whose
outcome the answer left in doubt, that the newest snapshot has not seen (a sync killed after
delivering and before its closing snapshot, a delivery run on its own) make a snapshot due at
once: company ids and settlements read it. Updates do not: Planhat's answer named each one,
and Planhat holds what was sent.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

READ_BACK_STATUSES = frozenset({"created", "sent", "unconfirmed", "pending", "unknown"})
"""Outcomes a Planhat snapshot must read back: a record Planhat created (it is now a company
the destinations and enduser payloads may name, under an id we did not choose), one Planhat
applied without saying how (``sent``: its answer's counts covered it only together with
others of another kind, so it may have been created; sometimes it was only updated or left
unchanged, and the snapshot is then one more than needed), or one whose outcome the answer
left open (settled against the snapshot). A record the answer names as ``updated`` or ``unchanged``
holds what we sent: listing all of Planhat again for it would only show that."""


MATCHED = frozenset({"updated", "unchanged"})
"""Outcomes of a record Planhat matched to one it holds. One the newest snapshot does not list
is read back all the same (``not_in_snapshot`` of a delivery): Planhat may have created it
from an earlier call whose answer was lost, or a person created it since the snapshot."""


@dataclass(frozen=True)
class SnapshotAge:
    """What the warehouse holds of Planhat's snapshots."""

    taken_at: dt.datetime | None
    """The oldest of the models' newest snapshots (None: a model was never fetched)."""
    unread_writes: bool
    """A delivery to a target the snapshot lists, recorded after ``taken_at``, created records
    or left outcomes in doubt (``READ_BACK_STATUSES``)."""


def snapshot_due(
    age: SnapshotAge, now: dt.datetime, interval_minutes: int, *, full: bool
) -> str | None:
    """Why a snapshot is due (a short reason for the summary), or None when the newest one
    still shows Planhat as the pipeline left it and is younger than the interval."""
    if full:
        return "full sync"
    if age.taken_at is None:
        return "no snapshot yet"
    if age.unread_writes:
        return "records created or in doubt since the last snapshot"
    if now - age.taken_at >= dt.timedelta(minutes=interval_minutes):
        return f"older than {interval_minutes} min"
    return None
