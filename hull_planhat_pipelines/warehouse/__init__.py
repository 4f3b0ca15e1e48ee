"""The DuckDB warehouse: where every table lives, and the I/O manager that writes them.

Dagster's DuckDB pandas I/O manager, with three changes a production table needs:
- replacing a partition is one transaction (delete and insert commit together, or neither);
- an empty frame still creates a correctly typed table, and columns are inserted by name, with
  new columns added, so a schema change never shifts values between columns;
- assets declared with ``keep_current_view`` (or, for callers that predate it, metadata
  ``{"current_view": {"key": ..., "order_by": [...]}}``) get a view ``<schema>_current.<table>``
  holding the newest row per key across partitions;
- partitioned tables are partitioned on ``partition_date`` unless an asset says otherwise
  (``partition_expr`` metadata).
Neither is asset metadata by default: the UI shows metadata to users, and these are plumbing.
"""

import datetime as dt
import fcntl
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
from dagster import InputContext, OutputContext, TableColumn, TableSchema
from dagster._core.storage.db_io_manager import DbIOManager, DbTypeHandler, TableSlice
from dagster_duckdb.io_manager import DuckDbClient, DuckDBIOManager, _get_cleanup_statement
from dagster_duckdb_pandas import DuckDBPandasTypeHandler

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
            return duckdb.connect(path, read_only=read_only)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or clock() >= deadline:
                raise
            sleeper(pause)
            pause = min(pause * 2, 2.0)


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


def column_schema(conn: duckdb.DuckDBPyConnection, schema: str, table: str) -> dict[str, Any]:
    """The written table's columns as ``dagster/column_schema`` metadata (the UI's Columns)."""
    rows = run(
        conn,
        "select column_name, data_type from information_schema.columns "
        "where table_schema = ? and table_name = ? order by ordinal_position",
        [schema, table],
    )
    if not rows:
        return {}
    columns = [TableColumn(name=name, type=dtype.lower()) for name, dtype in rows]
    return {"dagster/column_schema": TableSchema(columns=columns)}


def run(conn: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> list[tuple]:
    """Execute and consume the result (DuckDB refuses new work while a result is pending)."""
    return conn.execute(sql, params or []).fetchall()


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def current_view_sql(schema: str, table: str, key: str, order_by: Sequence[str]) -> str:
    order = ", ".join(f"{_quote(c)} desc nulls last" for c in order_by) or "1"
    return (
        f"create or replace view {schema}_current.{table} as "
        f"select * from {schema}.{table} "
        f"qualify row_number() over (partition by {_quote(key)} order by {order}) = 1"
    )


@dataclass(frozen=True)
class CurrentView:
    key: str
    order_by: tuple[str, ...]


_CURRENT_VIEWS: dict[str, CurrentView] = {}


def keep_current_view(asset_key: Sequence[str], key: str, order_by: Sequence[str]) -> None:
    """Have the I/O manager keep ``<schema>_current.<table>`` (newest row per ``key``, by
    ``order_by``) for this asset's table after every write."""
    _CURRENT_VIEWS["/".join(asset_key)] = CurrentView(key, tuple(order_by))


def _current_view(context: OutputContext) -> CurrentView | None:
    declared = (context.definition_metadata or {}).get("current_view")
    if declared:
        return CurrentView(declared["key"], tuple(declared["order_by"]))
    return _CURRENT_VIEWS.get(context.asset_key.to_user_string()) if context.has_asset_key else None


class _PartitionColumnDefault:
    """An output context whose definition metadata names the partition column by default."""

    def __init__(self, context: OutputContext) -> None:
        self._context = context

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    @property
    def definition_metadata(self) -> Mapping[str, Any]:
        return {"partition_expr": PARTITION_COLUMN, **(self._context.definition_metadata or {})}


class _WarehouseDbIOManager(DbIOManager):
    def _get_table_slice(self, context, output_context) -> TableSlice:
        return super()._get_table_slice(context, _PartitionColumnDefault(output_context))


class _TransactionalDuckDbClient(DuckDbClient):
    """Opens a transaction before the partition delete (the type handler commits it) and always
    closes its connection: the stock client leaks it when a write fails, keeping the file locked.
    """

    @staticmethod
    def delete_table_slice(context: OutputContext, table_slice: TableSlice, connection) -> None:
        run(connection, "begin transaction")
        if table_exists(connection, table_slice.schema, table_slice.table):
            run(connection, _get_cleanup_statement(table_slice))

    @staticmethod
    @contextmanager
    def connect(context, table_slice):
        with contextmanager(DuckDbClient.connect.__wrapped__)(context, table_slice) as conn:
            try:
                yield conn
            finally:
                conn.close()


class WarehousePandasTypeHandler(DuckDBPandasTypeHandler):
    def handle_output(
        self, context: OutputContext, table_slice: TableSlice, obj: pd.DataFrame, connection
    ) -> dict[str, Any]:
        target = f"{table_slice.schema}.{_quote(table_slice.table)}"
        frame = obj
        try:
            connection.register("_frame", frame)
            described = [
                (name, "VARCHAR" if dtype == '"NULL"' or dtype == "NULL" else dtype)
                for name, dtype, *_ in connection.execute(
                    "describe select * from _frame"
                ).fetchall()
            ]
            if not table_exists(connection, table_slice.schema, table_slice.table):
                columns = ", ".join(f"{_quote(name)} {dtype}" for name, dtype in described)
                run(connection, f"create table {target} ({columns})")
            existing = {
                row[0]
                for row in connection.execute(
                    "select column_name from information_schema.columns "
                    "where table_schema = ? and table_name = ?",
                    [table_slice.schema, table_slice.table],
                ).fetchall()
            }
            for name, dtype in described:
                if name not in existing:
                    run(connection, f"alter table {target} add column {_quote(name)} {dtype}")
            if len(frame):
                run(connection, f"insert into {target} by name select * from _frame")
            connection.unregister("_frame")
            view = _current_view(context)
            if view:
                run(connection, f"create schema if not exists {table_slice.schema}_current")
                run(
                    connection,
                    current_view_sql(
                        table_slice.schema, table_slice.table, view.key, list(view.order_by)
                    ),
                )
            schema = column_schema(connection, table_slice.schema, table_slice.table)
            run(connection, "commit")
        except Exception:
            run(connection, "rollback")
            raise
        if context.has_asset_partitions and not context.has_partition_key:
            return schema  # a range: the asset reports each partition's own count
        key = "dagster/partition_row_count" if context.has_partition_key else "dagster/row_count"
        return {key: len(frame), **schema}

    def load_input(
        self, context: InputContext, table_slice: TableSlice, connection
    ) -> pd.DataFrame:
        if not table_exists(connection, table_slice.schema, table_slice.table):
            return pd.DataFrame()
        return super().load_input(context, table_slice, connection)


class WarehouseIOManager(DuckDBIOManager):
    """The DuckDB pandas I/O manager with transactional, schema-tolerant partition writes."""

    @staticmethod
    def type_handlers() -> Sequence[DbTypeHandler]:
        return [WarehousePandasTypeHandler()]

    @staticmethod
    def default_load_type() -> type | None:
        return pd.DataFrame

    def create_io_manager(self, context) -> DbIOManager:
        return _WarehouseDbIOManager(
            db_client=_TransactionalDuckDbClient(),
            database=self.database,
            schema=self.schema_,
            type_handlers=self.type_handlers(),
            default_load_type=self.default_load_type(),
            io_manager_name="WarehouseIOManager",
        )


def append_table(conn: duckdb.DuckDBPyConnection, table: str, frame: pd.DataFrame) -> None:
    """Insert ``frame`` by column name, creating the table (and schema) on first use."""
    schema, name = table.split(".")
    exists = table_exists(conn, schema, name)
    if frame.empty and exists:
        return
    run(conn, f"create schema if not exists {schema}")
    conn.register("_append", frame)
    try:
        if exists:
            run(conn, f"insert into {table} by name select * from _append")
        else:
            run(conn, f"create table {table} as select * from _append")
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


# -- one deliverer at a time ---------------------------------------------------------------------
LOCK_WAIT_ENV_VAR = "HULL_PLANHAT_LOCK_WAIT"
DEFAULT_DELIVERY_LOCK_WAIT = 60.0
"""Seconds a second deliverer waits for the warehouse lock before it is refused."""


class WarehouseBusy(RuntimeError):
    """Another process holds the warehouse's delivery lock (``holder`` says who, if known)."""

    def __init__(self, path: str, holder: dict[str, Any], waited: float) -> None:
        self.path = path
        self.holder = holder
        self.waited = waited
        who = (
            f"pid {holder.get('pid', '?')}, run {holder.get('run_id', '?')}, "
            f"since {holder.get('since', '?')}"
            if holder
            else "an unknown process"
        )
        super().__init__(
            f"another sync holds the warehouse {path} ({who}); refused after waiting "
            f"{waited:g}s. Run again when it has finished."
        )


def lock_path(database: str) -> str:
    """The lock file beside the DuckDB file (the DuckDB file's own lock is per connection)."""
    return f"{database}.lock"


def lock_wait_seconds() -> float:
    raw = os.environ.get(LOCK_WAIT_ENV_VAR)
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_DELIVERY_LOCK_WAIT
    except ValueError:
        return DEFAULT_DELIVERY_LOCK_WAIT


_HELD: dict[str, list[Any]] = {}
"""Locks this process holds, by real path: [open file, depth]. Re-entrant within a process, so
the CLI's whole-sync lock covers the delivery steps it runs in process."""
_HELD_GUARD = threading.Lock()


def read_holder(database: str) -> dict[str, Any]:
    """Who holds (or last held) the lock, as written by the holder; {} when unknown."""
    try:
        text = Path(lock_path(database)).read_text()
        found = json.loads(text) if text.strip() else {}
        return found if isinstance(found, dict) else {}
    except (OSError, ValueError):
        return {}


@contextmanager
def delivery_lock(
    database: str,
    run_id: str,
    *,
    wait: float | None = None,
    sleeper: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[None]:
    """Hold the warehouse's delivery lock: one deliverer (CLI sync or Dagster delivery step)
    per warehouse. Waits up to ``wait`` seconds, then raises ``WarehouseBusy`` naming the holder.
    The lock is an ``flock`` on ``<warehouse>.lock``: the kernel releases it when the holder
    dies, even by SIGKILL, so a crashed run never blocks the next one."""
    Path(database).parent.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(lock_path(database))
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is not None:
            held[1] += 1
    if held is not None:
        try:
            yield
        finally:
            with _HELD_GUARD:
                held[1] -= 1
        return
    handle = open(key, "a+")  # noqa: SIM115 - held for the lock's lifetime
    budget = lock_wait_seconds() if wait is None else wait
    deadline = clock() + budget
    pause = 0.1
    while True:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if clock() >= deadline:
                handle.close()
                raise WarehouseBusy(database, read_holder(database), budget) from None
            sleeper(pause)
            pause = min(pause * 2, 2.0)
    handle.seek(0)
    handle.truncate()
    since = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    handle.write(json.dumps({"pid": os.getpid(), "run_id": run_id, "since": since}))
    handle.flush()
    entry = [handle, 1]
    with _HELD_GUARD:
        _HELD[key] = entry
    try:
        yield
    finally:
        with _HELD_GUARD:
            entry[1] -= 1
            if entry[1] <= 0:
                _HELD.pop(key, None)
        if entry[1] <= 0:
            handle.seek(0)
            handle.truncate()
            handle.flush()
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            handle.close()


# -- Copper tables: one write per run, without the I/O manager ------------------------------------
@dataclass(frozen=True)
class CopperSlice:
    """What a Copper run replaces in its table, besides the ids it wrote.

    ``first`` and ``end`` bound ``partition_date`` (``end`` exclusive): the run's partitions.
    Without ``date_column`` they are replaced whole (a range run: a backfill, "fetch all").
    With it, only rows whose ``date_column`` lies in ``[since, until]`` (epoch seconds; ``since``
    ``None`` is open below) are replaced: an incremental run upserts what changed, and a record
    deleted in Copper inside that window leaves with it, without touching the rest of the partition.
    """

    first: dt.date
    end: dt.date
    date_column: str | None = None
    since: int | None = None
    until: int | None = None


def _slice_condition(where: CopperSlice) -> tuple[str, list[Any]]:
    sql = f"({_quote(PARTITION_COLUMN)} >= ? and {_quote(PARTITION_COLUMN)} < ?"
    params: list[Any] = [where.first, where.end]
    if where.date_column is not None:
        column = _quote(where.date_column)
        if where.since is not None:
            sql += f" and {column} >= to_timestamp(?)"
            params.append(where.since)
        if where.until is not None:
            sql += f" and {column} <= to_timestamp(?)"
            params.append(where.until)
    return sql + ")", params


def write_copper_table(
    path: str,
    table: str,
    frame: pd.DataFrame,
    where: CopperSlice,
    *,
    gone_ids: Sequence[int] = (),
    current_view: CurrentView | None = None,
    types: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Replace ``where`` and the rows of every id in ``frame`` or ``gone_ids`` with ``frame``,
    in one transaction (a failed write leaves the table as it was).

    One statement pair for a whole range, whatever the number of partitions; deleting by id
    keeps one row per record even when its date moved to another partition. The table is
    created with ``types`` (column -> DuckDB type; the frame's own types for the others, so an
    empty frame still makes a typed table) and new columns are added; inserts go by name.
    Returns ``{"counts": {year start: rows stored}, "schema": column metadata}`` for the run's
    partitions (UTC years), read back after the write.
    """
    schema, name = table.split(".")
    target = f"{schema}.{_quote(name)}"
    conn = connect(path)
    try:
        run(conn, "begin transaction")
        try:
            run(conn, f"create schema if not exists {schema}")
            conn.register("_frame", frame)
            described = [
                (column, "VARCHAR" if dtype in ('"NULL"', "NULL") else dtype)
                for column, dtype, *_ in run(conn, "describe select * from _frame")
            ]
            if not table_exists(conn, schema, name):
                declared = dict(types or {})
                columns = ", ".join(
                    f"{_quote(c)} {declared.get(c, dtype)}" for c, dtype in described
                )
                run(conn, f"create table {target} ({columns})")
            existing = {
                row[0]
                for row in run(
                    conn,
                    "select column_name from information_schema.columns "
                    "where table_schema = ? and table_name = ?",
                    [schema, name],
                )
            }
            for column, dtype in described:
                if column not in existing:
                    run(conn, f"alter table {target} add column {_quote(column)} {dtype}")
            condition, params = _slice_condition(where)
            conn.register("_gone", pd.DataFrame({"id": pd.array(list(gone_ids), dtype="Int64")}))
            run(
                conn,
                f"delete from {target} where {condition} "
                "or id in (select id from _frame) or id in (select id from _gone)",
                params,
            )
            if len(frame):
                run(conn, f"insert into {target} by name select * from _frame")
            if current_view is not None:
                run(conn, f"create schema if not exists {schema}_current")
                run(
                    conn,
                    current_view_sql(schema, name, current_view.key, list(current_view.order_by)),
                )
            run(conn, "commit")
        except Exception:
            run(conn, "rollback")
            raise
        finally:
            for view in ("_frame", "_gone"):
                conn.unregister(view)  # a name never registered is ignored
        rows = run(
            conn,
            f"select date_trunc('year', {_quote(PARTITION_COLUMN)})::date, count(*) "
            f"from {target} where {_quote(PARTITION_COLUMN)} >= ? "
            f"and {_quote(PARTITION_COLUMN)} < ? group by 1",
            [where.first, where.end],
        )
        return {
            "counts": {day: int(n) for day, n in rows},
            "schema": column_schema(conn, schema, name),
        }
    finally:
        conn.close()
