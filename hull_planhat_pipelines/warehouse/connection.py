"""The DuckDB file every table lives in, and short-lived connections to it.

DuckDB allows one writing process per file: every connection here is opened for one step and
closed, never held across an HTTP call (``attachments``: closing the last one releases the file).
"""

import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, cast

import duckdb
import pandas as pd
from dagster import TableColumn, TableSchema

from hull_planhat_pipelines.warehouse.attachments import WarehouseConnection, open_connection
from hull_planhat_pipelines.warehouse.column_docs import column_description

WAREHOUSE_ENV_VAR = "HULL_PLANHAT_WAREHOUSE"
PARTITION_COLUMN = "partition_date"
DEFAULT_WAREHOUSE = "data/warehouse.duckdb"


def warehouse_path() -> str:
    """The DuckDB file of all tables (``HULL_PLANHAT_WAREHOUSE``), its folder created."""
    path = os.environ.get(WAREHOUSE_ENV_VAR) or DEFAULT_WAREHOUSE
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return path


LOCK_WAIT_SECONDS = 120.0


def connect(
    path: str,
    *,
    read_only: bool = False,
    wait: float = LOCK_WAIT_SECONDS,
    sleeper: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> duckdb.DuckDBPyConnection:
    """Open the warehouse, waiting (bounded) while another process holds its lock.

    DuckDB allows one writing process per file; runs that overlap take turns instead of
    failing. Past ``wait`` seconds the lock error is raised with what was waited for.
    """
    deadline = clock() + wait
    pause = 0.1
    while True:
        try:
            # the cursor of a kept instance that attached the file: it behaves as a connection
            return cast(duckdb.DuckDBPyConnection, open_connection(path, read_only=read_only))
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or clock() >= deadline:
                raise
            sleeper(pause)
            pause = min(pause * 2, 2.0)


def release(conn: duckdb.DuckDBPyConnection, *, checkpoint: bool = True) -> None:
    """Close ``conn``; ``checkpoint=False``: if it was the file's last connection in this
    process, leave its commits in the write-ahead log instead of checkpointing them now
    (``attachments``)."""
    if isinstance(conn, WarehouseConnection):
        conn.close(checkpoint=checkpoint)
    else:
        conn.close()


@contextmanager
def read_only(path: str | None = None) -> Iterator[duckdb.DuckDBPyConnection | None]:
    """A short-lived read-only connection, or ``None`` if the warehouse does not exist yet."""
    path = path or warehouse_path()
    if not Path(path).exists():
        yield None
        return
    conn = connect(path, read_only=True)
    try:
        yield conn
    finally:
        conn.close()


def table_exists(conn: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    rows = run(
        conn,
        "select count(*) from information_schema.tables where table_schema = ? and table_name = ?",
        [schema, table],
    )
    return bool(rows and rows[0][0])


def has_column(conn: duckdb.DuckDBPyConnection, table: str, column: str) -> bool:
    """Whether ``table`` exists with ``column`` (tables written before the column lack it)."""
    schema, name = table.split(".")
    rows = run(
        conn,
        "select count(*) from information_schema.columns "
        "where table_schema = ? and table_name = ? and column_name = ?",
        [schema, name, column],
    )
    return bool(rows and rows[0][0])


def column_schema(
    conn: duckdb.DuckDBPyConnection,
    schema: str,
    table: str,
    descriptions: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The written table's columns as ``dagster/column_schema`` metadata (the UI's Columns),
    described by ``descriptions`` (a declaration's own columns) or ``column_docs``."""
    rows = run(
        conn,
        "select column_name, data_type from information_schema.columns "
        "where table_schema = ? and table_name = ? order by ordinal_position",
        [schema, table],
    )
    if not rows:
        return {}
    columns = [
        TableColumn(
            name=name,
            type=dtype.lower(),
            description=(descriptions or {}).get(name)
            or column_description(f"{schema}.{table}", name),
        )
        for name, dtype in rows
    ]
    return {"dagster/column_schema": TableSchema(columns=columns)}


def run(conn: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> list[tuple]:
    """Execute and consume the result (DuckDB refuses new work while a result is pending)."""
    return conn.execute(sql, params or []).fetchall()


@contextmanager
def transaction(conn: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """The block's writes in one transaction: committed when it ends, rolled back when it
    raises, an interrupt included (a caller's connection is not left mid-transaction; a
    killed process commits nothing either). A rollback that fails does not hide the error."""
    run(conn, "begin transaction")
    try:
        yield
    except BaseException:
        with suppress(duckdb.Error):
            run(conn, "rollback")
        raise
    run(conn, "commit")


def select_where(table: str, where: str, columns: str = "*") -> str:
    """SQL for ``columns`` of the rows of ``table`` (a table, not a view) matching ``where``,
    fetched by row id. A plain filter joined on a subquery reads every column of every row it
    tests (all of a profile store's attribute text to return a hundred profiles); by row id,
    the condition reads its own columns, and the others are read over the range of the
    matching row ids only. Matches spread over the table still read most of its blocks in one
    statement: ``fetch_where`` reads them a few row groups at a time."""
    return f"select {columns} from {table} where rowid in (select rowid from {table} where {where})"


ROWS_PER_FETCH = 122_880
"""DuckDB's row group (its default size): ``fetch_where`` reads the rows of a few at a time."""
ROW_GROUPS_PER_FETCH = 1
"""Row groups holding matches that one statement of ``fetch_where`` reads. A statement holds
every block it read until it ends, and a hundred rows spread over a row group touch nearly all
of its blocks: at 100,000 people (281,000 profiles, three row groups) a hundred profiles took
26 MB one group a statement, 46 to 55 MB two (the incremental ``hull_profiles``' peak then).
Two a statement are scanned on two threads (7,153 profiles spread over a million: 75 ms
against 125 ms one a statement, 60 ms of the 1.3 s of ``benchmarks/hull_diff.py``); one keeps
the peak at what a 10,000-person store takes, whatever the size of the table."""


def fetch_where(
    conn: duckdb.DuckDBPyConnection, table: str, where: str, columns: str = "*"
) -> pd.DataFrame:
    """``columns`` of the rows of ``table`` matching ``where``, fetched by row id
    (``select_where``) ``ROW_GROUPS_PER_FETCH`` row groups at a time, in the table's order.

    A fetch by row id scans every selected column over the range of the row ids: a hundred
    profiles spread over the store read nearly every block of it (33 of the 36 MB a
    100,000-person store's users take), and DuckDB holds the blocks a statement read until it
    ends. Statements over a few row groups holding a match read no more in all, and the
    connection lets each statement's blocks go before the next (``attachments``): the peak is
    a few row groups' blocks, whatever the size of the table. The statements read one snapshot
    only inside the caller's transaction, as any two statements do."""
    found = "temp._fetched_rowids"
    run(
        conn,
        f"create or replace temp table {found} as select rowid as r from {table} where {where}",
    )
    try:
        return fetch_rowids(conn, table, found, columns)
    finally:
        run(conn, f"drop table if exists {found}")


def _in_groups(column: str, groups: list[int]) -> str:
    """SQL: ``column`` (a row id) lies in one of the row groups ``groups`` (ranges DuckDB prunes
    the scan by)."""
    return " or ".join(
        f"({column} >= {g * ROWS_PER_FETCH} and {column} < {(g + 1) * ROWS_PER_FETCH})"
        for g in groups
    )


def fetch_rowids(
    conn: duckdb.DuckDBPyConnection, table: str, found: str, columns: str = "*"
) -> pd.DataFrame:
    """``columns`` of the rows of ``table`` whose row ids the table ``found`` holds (column
    ``r``; repeats allowed), a few row groups at a time as ``fetch_where`` reads them. For a
    caller that found the rows in the scans it made anyway: a second scan only to turn its
    keys into row ids costs as much as one of them. As for ``fetch_where``'s own two
    statements, the row ids name the rows the scans saw only while nothing writes the table
    between the scans and this read: inside one transaction, or while its writers are held
    off (one sync at a time writes the profile store)."""
    groups = sorted(
        g for (g,) in run(conn, f"select distinct r // {ROWS_PER_FETCH} from {found}")
    ) or [0]  # none matched: one empty frame, with its columns
    frames = []
    for start in range(0, len(groups), ROW_GROUPS_PER_FETCH):
        span = groups[start : start + ROW_GROUPS_PER_FETCH]
        frames.append(
            conn.execute(
                f"select {columns} from {table} where ({_in_groups('rowid', span)})"
                f" and rowid in (select r from {found} where {_in_groups('r', span)})"
                " order by rowid"  # the row groups' threads return rows in any order
            ).fetchdf()
        )
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def quote(name: str) -> str:
    """A DuckDB identifier, quoted."""
    return '"' + name.replace('"', '""') + '"'


def trimmed(column: str) -> str:
    """SQL: ``trim(column)``, trimming only the values that start or end with a space (``trim``
    strips spaces only): over a million values, trimming them all cost more than the rest of
    a key match."""
    return (
        f"case when starts_with({column}, ' ') or ends_with({column}, ' ')"
        f" then trim({column}) else {column} end"
    )


def append_table(
    conn: duckdb.DuckDBPyConnection,
    table: str,
    frame: pd.DataFrame,
    *,
    exists: bool = False,
    columns: str = "*",
    params: list[Any] | None = None,
) -> None:
    """Insert ``frame`` by column name, creating the table (and schema) on first use.
    ``exists``: the caller knows the table is there (the catalog is not asked). ``columns``:
    what is inserted, a select list over the frame (registered as ``_append``), with
    ``params``."""
    schema, name = table.split(".")
    exists = exists or table_exists(conn, schema, name)
    if frame.empty and exists:
        return
    if not exists:
        run(conn, f"create schema if not exists {schema}")
    conn.register("_append", frame)
    try:
        select = f"select {columns} from _append"
        if exists:
            run(conn, f"insert into {table} by name {select}", params)
        else:
            run(conn, f"create table {table} as {select}", params)
    finally:
        conn.unregister("_append")


SYNC_LOG_DDL = """
create schema if not exists ops;
create table if not exists ops.sync_log (
    logged_at timestamptz, run_id varchar, asset varchar, event varchar, object_type varchar,
    object_id varchar, reason varchar, details varchar
);
"""


def append_sync_log(
    frame: pd.DataFrame, path: str | None = None, *, wait: float = LOCK_WAIT_SECONDS
) -> None:
    """Append rows to ``ops.sync_log`` (one short write; never held across steps). ``wait``
    bounds the wait for another process's lock (a sensor tick cannot wait long)."""
    if frame.empty:
        return
    conn = connect(path or warehouse_path(), wait=wait)
    try:
        for statement in filter(str.strip, SYNC_LOG_DDL.split(";")):
            run(conn, statement)
        conn.register("_events", frame)
        run(conn, "insert into ops.sync_log by name select * from _events")
    finally:
        conn.close()
