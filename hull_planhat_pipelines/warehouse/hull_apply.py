"""Hull's apply in the warehouse: read the raw rows fetched since the last apply, compute the
changes (pure, ``sync.hull_sync``) and write them back with their watermarks in one transaction.

It reads only the rows fetched since it last applied (a watermark on ``_fetched_at`` per source;
for Planhat, the rows of a new snapshot that differ from the one last applied), then only the
slice of the store those rows can touch, and writes back only what changed (``hull_store``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import duckdb
import pandas as pd

from hull_planhat_pipelines.settings import Settings
from hull_planhat_pipelines.sync.copper.schema import COPPER_OBJECTS
from hull_planhat_pipelines.sync.hull.changes import (
    Changes,
    HandedRows,
    ProfileStore,
    compute_changes,
)
from hull_planhat_pipelines.sync.hull.from_copper import MAPPED_COLUMNS, CopperRows
from hull_planhat_pipelines.sync.hull.from_planhat import PlanhatRows, unapplied_records
from hull_planhat_pipelines.sync.hull.segments import segments_hash
from hull_planhat_pipelines.warehouse import hull_store, removals
from hull_planhat_pipelines.warehouse.connection import (
    append_table,
    column_schema,
    connect,
    quote,
    run,
    table_exists,
    transaction,
)
from hull_planhat_pipelines.warehouse.outbox import OUTBOX_DDL, queue
from hull_planhat_pipelines.warehouse.planhat_snapshots import (
    HULL_MODELS,
    diff_snapshot,
    remember_snapshot,
)

COPPER_SOURCES = tuple(name for name, obj in COPPER_OBJECTS.items() if obj.hull_source)
PLANHAT_SOURCES = HULL_MODELS


STATE_DDL = [
    "create schema if not exists hull",
    "create schema if not exists ops",
    "create table if not exists ops.hull_watermarks (source varchar primary key, "
    "fetched_at timestamptz)",
    "create table if not exists ops.hull_state (key varchar primary key, value varchar)",
    *OUTBOX_DDL,
]


@dataclass
class Sources:
    copper: CopperRows | None
    planhat: PlanhatRows | None
    watermarks: dict[str, pd.Timestamp]
    rows_read: dict[str, int]
    snapshots: list[str]
    """Planhat snapshots diffed: the applied copy follows them on commit."""

    def hand_over(self) -> HandedRows:
        """The raw rows, no longer held here: once staged, the sync lets them go."""
        rows = HandedRows(self.copper, self.planhat)
        self.copper, self.planhat = None, None
        return rows


def _frame(conn: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None):
    return conn.execute(sql, params or []).fetchdf()


def _watermarks(conn: duckdb.DuckDBPyConnection) -> dict[str, pd.Timestamp]:
    rows = conn.execute("select source, fetched_at from ops.hull_watermarks").fetchall()
    return {source: pd.Timestamp(at) for source, at in rows}


def _read(name: str) -> str:
    """The columns of a Copper table a sync reads: what the mapping reads, and the fetch time."""
    return ", ".join([*MAPPED_COLUMNS[name], "_fetched_at"])


def _since(
    conn: duckdb.DuckDBPyConnection, table: str, mark: pd.Timestamp | None, columns: str
) -> pd.DataFrame | None:
    schema, name = table.split(".")
    if not table_exists(conn, schema, name):
        return None
    if mark is None:
        return _frame(conn, f"select {columns} from {table}")
    return _frame(conn, f"select {columns} from {table} where _fetched_at > ?", [mark])


def _copper_since(
    conn: duckdb.DuckDBPyConnection, name: str, mark: pd.Timestamp | None
) -> pd.DataFrame | None:
    """The current rows of ``copper_current.<name>`` fetched after ``mark``. The view keeps the
    newest fetch of each id, so the newest of an id's rows fetched after ``mark`` is its current
    row: the window runs over those rows only, not over the whole raw table."""
    if mark is None or not table_exists(conn, "copper", name):
        return _since(conn, f"copper_current.{name}", mark, _read(name))
    return _frame(
        conn,
        f"select {_read(name)} from copper.{name} where _fetched_at > ? qualify row_number() over"
        " (partition by id order by _fetched_at desc nulls last, date_modified desc nulls last)"
        " = 1",
        [mark],
    )


def read_sources(conn: duckdb.DuckDBPyConnection) -> Sources:
    """Raw rows fetched since the last apply (opportunities: all current ones if any changed;
    Planhat: the rows of a new snapshot that differ from the one last applied)."""
    marks = _watermarks(conn)
    frames: dict[str, pd.DataFrame | None] = {}
    for name in COPPER_SOURCES:
        schema = "copper_current" if table_exists(conn, "copper_current", name) else None
        frames[f"copper.{name}"] = (
            _copper_since(conn, name, marks.get(f"copper.{name}")) if schema else None
        )
    changed_opportunities = frames["copper.opportunities"]
    if changed_opportunities is not None and not changed_opportunities.empty:
        frames["copper.opportunities"] = _frame(
            conn, f"select {_read('opportunities')} from copper_current.opportunities"
        )
    snapshots = {
        name: diff_snapshot(conn, name, marks.get(f"planhat.{name}")) for name in PLANHAT_SOURCES
    }
    new_marks = dict(marks)
    # every source, 0 when it had nothing new: an empty run reads the same as any other
    rows_read = {f"copper.{n}": 0 for n in COPPER_SOURCES} | {
        f"planhat.{n}": 0 for n in PLANHAT_SOURCES
    }
    for source, frame in frames.items():
        if frame is not None and not frame.empty:
            rows_read[source] = len(frame)
            newest = pd.Timestamp(frame["_fetched_at"].max())
            new_marks[source] = max(newest, marks[source]) if source in marks else newest
    for name, diff in snapshots.items():
        if diff is not None and diff.fetched_at is not None:
            source = f"planhat.{name}"
            rows_read[source] = len(diff.changed) if diff.changed is not None else 0
            mark = marks.get(source)
            new_marks[source] = diff.fetched_at if mark is None else max(diff.fetched_at, mark)

    def nonempty(key: str) -> pd.DataFrame | None:
        frame = frames.get(key)
        return frame if frame is not None and not frame.empty else None

    copper = CopperRows(  # deletions are judged on the store slice (``hull_store``)
        leads=nonempty("copper.leads"),
        people=nonempty("copper.people"),
        companies=nonempty("copper.companies"),
        opportunities=nonempty("copper.opportunities"),
        activities=nonempty("copper.activities"),
        opportunities_complete=nonempty("copper.opportunities") is not None,
    )

    def snapshot(name: str, previous: bool = False) -> pd.DataFrame | None:
        diff = snapshots[name]
        if diff is None or diff.changed is None:
            return None
        return diff.previous if previous else diff.changed

    planhat = PlanhatRows(
        companies=snapshot("companies"),
        endusers=snapshot("endusers"),
        previous_companies=snapshot("companies", previous=True),
        previous_endusers=snapshot("endusers", previous=True),
        gone={name: diff.deleted for name, diff in snapshots.items() if diff and diff.deleted},
    )
    applied = [name for name, diff in snapshots.items() if diff is not None]
    return Sources(copper, planhat, new_marks, rows_read, applied)


def _stamped_columns(frame: pd.DataFrame) -> str:
    """The columns of ``frame`` with the run's stamps (``run_id``, ``computed_at``: two
    parameters), text columns typed as text in SQL: retyped in pandas, a first load's million
    upserts cost a second and a copy of every text column."""
    typed = [
        f"{quote(c)}::varchar as {quote(c)}" if frame[c].dtype == object else quote(c)
        for c in frame.columns
    ]
    return ", ".join([*typed, "?::varchar as run_id", "?::timestamptz as computed_at"])


def apply(
    conn: duckdb.DuckDBPyConnection,
    settings: Settings,
    *,
    run_id: str,
    now: dt.datetime,
    forwarding: bool,
) -> tuple[Changes, Sources, int, dict[str, Any]]:
    """Compute and apply one sync in a single transaction; returns what changed, the
    outbox messages queued and what was read of the store (``store_read``).

    Only the slice of the store the fetched rows can touch is read (``hull_store``), and only
    the changed profiles and events are written back, with their segments (and the users of a
    changed account theirs). Every profile's segments are re-evaluated when the definitions
    changed (a digest of them is kept in ``ops.hull_state``): a widened segment applies on the
    next run. With ``forwarding`` on, the firehose messages of the changes join the outbox in
    the same transaction; off, nothing is queued (turning it on later forwards changes from
    then on).
    """
    for statement in STATE_DDL:
        run(conn, statement)
    sources = read_sources(conn)
    definitions = segments_hash(settings.segments)
    stored = run(conn, "select value from ops.hull_state where key = 'segments_hash'")
    segments_changed = not stored or stored[0][0] != definitions
    first = not table_exists(conn, "hull", "users")
    judged_up_to = removals.horizon(conn)  # read before the slice: it judges these at least
    reader = hull_store.SliceReader(conn)
    try:
        changes = compute_changes(settings, reader, sources.hand_over(), now=now)
    finally:
        hull_store.drop_slice(conn)
    with transaction(conn):
        outbox = 0
        if not changes.is_empty or segments_changed or first:
            applied = hull_store.write_changes(
                conn,
                settings.segments,
                reader.store,
                changes,
                now,
                everything=segments_changed or first,
                held_segments=reader.segments,
            )
            for table, upserts in (
                ("hull.user_upserts", changes.user_upserts),
                ("hull.account_upserts", changes.account_upserts),
            ):
                append_table(
                    conn, table, upserts, columns=_stamped_columns(upserts), params=[run_id, now]
                )
            if forwarding:  # the messages cost as much as the rest of a first load
                outbox = queue(conn, changes, applied.users, applied.accounts, run_id=run_id)
        run(
            conn,
            "insert or replace into ops.hull_state values ('segments_hash', ?)",
            [definitions],
        )
        removals.forget_judged(conn, judged_up_to)
        unapplied = unapplied_records(changes.log)
        for name in sources.snapshots:
            remember_snapshot(conn, name, unapplied.get(name, ()))
        for source, mark in sources.watermarks.items():
            run(
                conn,
                "insert or replace into ops.hull_watermarks values (?, ?)",
                [source, mark.to_pydatetime()],
            )
    return changes, sources, outbox, store_read(reader.store, whole=segments_changed or first)


def store_read(part: ProfileStore, *, whole: bool) -> dict[str, Any]:
    """What one sync read of the profile store: the slice its records can touch (profiles and
    events), and whether every profile was read and rewritten besides (the first load, or a
    segment definition changed). The slice is what an incremental sync costs: it grows with
    the change, not with the store."""
    return {
        "users": _length(part.users),
        "accounts": _length(part.accounts),
        "events": _length(part.events),
        "whole_store": whole,
    }


def _length(frame: pd.DataFrame | None) -> int:
    return 0 if frame is None else len(frame)


HULL_TABLES = ("user_upserts", "account_upserts", "events", "users", "accounts")


@dataclass
class Applied:
    """One apply and what the assets report of it, read back before the connection closes."""

    changes: Changes
    sources: Sources
    outbox: int
    store_read: dict[str, Any]
    sizes: dict[str, int]
    segments: dict[str, dict[str, int]]
    columns: dict[str, dict[str, Any]]


def apply_sync(
    path: str, settings: Settings, *, run_id: str, now: dt.datetime, forwarding: bool
) -> Applied:
    """``apply`` on a connection of its own, closed before the caller forwards anything over
    HTTP; returns the table sizes, segment counts and column schemas the assets report."""
    conn = connect(path)
    try:
        changes, sources, outbox, read = apply(
            conn, settings, run_id=run_id, now=now, forwarding=forwarding
        )
        return Applied(
            changes=changes,
            sources=sources,
            outbox=outbox,
            store_read=read,
            sizes={
                name: hull_store.row_count(conn, f"hull.{name}")
                for name in ("users", "accounts", "events")
            },
            segments={
                name: hull_store.segment_counts(conn, f"hull.{name}")
                for name in ("users", "accounts")
            },
            columns={name: column_schema(conn, "hull", name) for name in HULL_TABLES},
        )
    finally:
        conn.close()
