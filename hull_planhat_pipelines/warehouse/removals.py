"""Ids removed from the Copper tables, kept until Hull has judged them.

A record deleted in Copper leaves its raw table when the window or range that held it is
written again (``write_copper_table``), and Hull then detaches the profiles still holding it.
Finding those by comparing every profile's anonymous ids with every living id would cost the
whole store on every apply, though records are rarely deleted. So the write logs each id it
removed (``ops.copper_removals``) in its own transaction; Hull reads only the logged ids, and
forgets those it judged in the apply's transaction (a failed apply judges them again).

A store never judged against the log (a warehouse from before it, where removals went
unlogged) is judged in full once, then by the log (``ops.hull_state`` key ``copper_removals``).
"""

from __future__ import annotations

import duckdb

from hull_planhat_pipelines.warehouse.connection import run, table_exists

REMOVALS = "ops.copper_removals"
STATE_KEY = "copper_removals"
_DDL = (
    "create schema if not exists ops;"
    "create sequence if not exists ops.copper_removal_seq;"
    f"create table if not exists {REMOVALS} (seq bigint, object varchar, id varchar)"
)


def remember_removals(conn: duckdb.DuckDBPyConnection, table: str, ids: str) -> int:
    """Log the ids in ``ids`` (a table or subquery with an ``id`` column) as removed from
    ``copper.<table>``; returns how many. Runs inside the caller's write transaction."""
    count = run(conn, f"select count(*) from {ids}")[0][0]
    if count:
        run(conn, _DDL)
        run(
            conn,
            # numbers never reused, even once the log was emptied: an apply forgets up to the
            # newest it read, never a removal logged after
            f"insert into {REMOVALS} select nextval('ops.copper_removal_seq'), ?, id::varchar"
            f" from {ids}",
            [table],
        )
    return int(count)


def judge_in_full(conn: duckdb.DuckDBPyConnection) -> None:
    """A Copper table created anew (dropped and fetched again): what left Copper meanwhile was
    never logged, so the next apply judges the store in full again."""
    if table_exists(conn, "ops", "hull_state"):
        run(conn, "delete from ops.hull_state where key = ?", [STATE_KEY])


def judged_by_log(conn: duckdb.DuckDBPyConnection) -> bool:
    """Whether the store was judged in full once, so that the log names every removal since."""
    if not table_exists(conn, "ops", "hull_state"):
        return False
    return bool(run(conn, "select 1 from ops.hull_state where key = ?", [STATE_KEY]))


def removed_ids(conn: duckdb.DuckDBPyConnection, table: str) -> str | None:
    """SQL for the ids logged as removed from ``copper.<table>`` (as text); None when none."""
    if not table_exists(conn, "ops", "copper_removals"):
        return None
    found = run(conn, f"select 1 from {REMOVALS} where object = ? limit 1", [table])
    if not found:
        return None
    return f"(select id from {REMOVALS} where object = '{table}')"


def horizon(conn: duckdb.DuckDBPyConnection) -> int:
    """The newest logged removal: an apply that read the log forgets up to this one only (a
    Copper write committed after the read is judged by the next apply)."""
    if not table_exists(conn, "ops", "copper_removals"):
        return 0
    return int(run(conn, f"select coalesce(max(seq), 0) from {REMOVALS}")[0][0])


def forget_judged(conn: duckdb.DuckDBPyConnection, up_to: int) -> None:
    """Inside the apply's transaction: the removals up to ``up_to`` are judged, and the store
    is judged by the log from now on (needs ``ops.hull_state``)."""
    if up_to and table_exists(conn, "ops", "copper_removals"):
        run(conn, f"delete from {REMOVALS} where seq <= ?", [up_to])
    run(conn, "insert or replace into ops.hull_state values (?, 'judged')", [STATE_KEY])
