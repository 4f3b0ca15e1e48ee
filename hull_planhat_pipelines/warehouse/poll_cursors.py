"""Where a command-line sync's Copper poll resumes.

The Dagster sensor keeps its cursor (``CopperCursor``) in the instance. A ``hull-planhat sync``
may run with an ephemeral instance, so it keeps the same cursor in the warehouse, beside the
tables it describes: a new or deleted warehouse has none, and its first sync fetches as it
always did. A sync takes the cursor (reads and removes it) when it starts and saves the
advanced one only when the whole cycle went through: a sync that failed, left records to
retry, was a dry run or was killed leaves none, so the next one fetches from the warehouse's
resume points and runs the rest of the chain as it did before the cursor existed. A cursor
saved under another configuration is not used either: segments, mappings or destinations
that changed reach the profiles and Planhat with that first run's chain, not with the next
change in Copper.
"""

from __future__ import annotations

from hull_planhat_pipelines.warehouse.connection import (
    connect,
    read_only,
    run,
    table_exists,
    warehouse_path,
)

POLL_CURSORS = "ops.poll_cursors"
_DDL = (
    "create schema if not exists ops;"
    f"create table if not exists {POLL_CURSORS} "
    "(name varchar primary key, cursor varchar, settings varchar, saved_at timestamptz)"
)


def read_poll_cursor(name: str, path: str | None = None) -> str | None:
    """The cursor saved under ``name``, left in place; ``None`` when there is none (never saved,
    taken by a sync that did not end cleanly, or no warehouse yet)."""
    with read_only(path) as conn:
        if conn is None or not table_exists(conn, "ops", "poll_cursors"):
            return None
        rows = run(conn, f"select cursor from {POLL_CURSORS} where name = ?", [name])
    return rows[0][0] if rows else None


def take_poll_cursor(name: str, settings: str, path: str | None = None) -> str | None:
    """The cursor saved under ``name``, removed from the warehouse; ``None`` when there is none
    or when it was saved under other ``settings`` (a fingerprint of the configuration)."""
    if read_poll_cursor(name, path) is None:  # nothing to take: no write
        return None
    conn = connect(path or warehouse_path())
    try:
        rows = run(
            conn, f"delete from {POLL_CURSORS} where name = ? returning cursor, settings", [name]
        )
    finally:
        conn.close()
    return rows[0][0] if rows and rows[0][1] == settings else None


def save_poll_cursor(name: str, cursor: str, settings: str, path: str | None = None) -> None:
    conn = connect(path or warehouse_path())
    try:
        run(conn, _DDL)
        run(
            conn,
            f"insert or replace into {POLL_CURSORS} values (?, ?, ?, now())",
            [name, cursor, settings],
        )
    finally:
        conn.close()
