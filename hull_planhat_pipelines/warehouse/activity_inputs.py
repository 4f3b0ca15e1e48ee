"""What the activity payloads read: the tracked events not yet sent of users in the contact
segments, and only those users.

Events are sent once each, so after the first delivery almost every event is either untracked,
sent already or of a user outside the segments (never sent while the user stays outside); reading the whole event and profile tables every cycle would cost the store,
not the change. The events left out are counted here (the progress event reports them), the
rest are read with the users who carry them and those users' accounts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import pandas as pd

from hull_planhat_pipelines.sync.planhat.shared import ACTIVITIES
from hull_planhat_pipelines.warehouse.connection import select_where, table_exists
from hull_planhat_pipelines.warehouse.deliveries import FINGERPRINTS, in_segment, read_rows_by_id


@dataclass(frozen=True)
class ActivityInputs:
    events: pd.DataFrame
    """Tracked events whose id was never delivered, of users in the contact segments (an id
    seen twice comes twice)."""
    users: pd.DataFrame
    """The profiles those events belong to."""
    accounts: pd.DataFrame
    """Those users' accounts."""
    left_out: dict[str, int]
    """Events not read: ``events`` (all of them, read or not), ``not_tracked``,
    ``already_sent`` (tracked, delivered before) and ``not_in_segment`` (tracked, not sent, of
    a user outside the contact segments or unknown: read again once the user enters one)."""


def activity_inputs(
    conn: duckdb.DuckDBPyConnection | None, tracked: Sequence[str], segments: Sequence[str]
) -> ActivityInputs | None:
    """``None`` while Hull's tables do not exist yet (the first runs)."""
    if conn is None or not all(
        table_exists(conn, "hull", t) for t in ("events", "users", "accounts")
    ):
        return None
    names = list(tracked) or [""]
    marks = ", ".join("?" for _ in names)
    sent = (
        f"exists (select 1 from {FINGERPRINTS} f where f.target = '{ACTIVITIES}' "
        "and f.key = cast(e.event_id as varchar))"
        if table_exists(conn, *FINGERPRINTS.split("."))
        else "false"
    )
    # an event of a user outside the segments is never sent: it is counted, not read
    members = (
        "coalesce(e.user_hull_id in"
        f" (select hull_id from hull.users where {in_segment(list(segments))}), false)"
    )
    candidates = select_where(
        "hull.events e", f"e.name in ({marks}) and not {sent} and {members}", "e.*"
    )
    (total, not_tracked, already, outside) = conn.execute(
        f"select count(*), count(*) filter (where e.name is null or e.name not in ({marks})), "
        f"count(*) filter (where e.name in ({marks}) and {sent}), "
        f"count(*) filter (where e.name in ({marks}) and not {sent} and not {members})"
        " from hull.events e",
        [*names, *names, *names],
    ).fetchone()
    events = conn.execute(candidates, names).fetchdf()
    # by the ids read: the candidates' query (its anti-join over the fingerprints) runs once
    users = read_rows_by_id(conn, "hull.users", events["user_hull_id"])
    accounts = read_rows_by_id(conn, "hull.accounts", users["account_hull_id"])
    return ActivityInputs(
        events=events,
        users=users,
        accounts=accounts,
        left_out={
            "events": int(total) - len(events),
            "not_tracked": int(not_tracked),
            "already_sent": int(already),
            "not_in_segment": int(outside),
        },
    )
