"""Whether a sync takes a Planhat snapshot before it delivers (pure).

A snapshot is a full list by nature (every company and enduser, whatever changed), so it is
taken on the interval Planhat's fetch is configured for, as the daemon's sensor does, and not
on every sync. Planhat changes in two ways: people edit it (seen at the next due snapshot,
the documented delay), and the pipeline writes to it. Writes the newest snapshot has not seen
(a sync killed after delivering and before its closing snapshot, a delivery run on its own)
make a snapshot due at once: owners, company ids and settlements read it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True)
class SnapshotAge:
    """What the warehouse holds of Planhat's snapshots."""

    taken_at: dt.datetime | None
    """The oldest of the models' newest snapshots (None: a model was never fetched)."""
    written_since: bool
    """A delivery to a target the snapshot lists was recorded after ``taken_at``."""


def snapshot_due(
    age: SnapshotAge, now: dt.datetime, interval_minutes: int, *, full: bool
) -> str | None:
    """Why a snapshot is due (a short reason for the summary), or None when the newest one
    still shows Planhat as the pipeline left it and is younger than the interval."""
    if full:
        return "full sync"
    if age.taken_at is None:
        return "no snapshot yet"
    if age.written_since:
        return "written to since the last snapshot"
    if now - age.taken_at >= dt.timedelta(minutes=interval_minutes):
        return f"older than {interval_minutes} min"
    return None
