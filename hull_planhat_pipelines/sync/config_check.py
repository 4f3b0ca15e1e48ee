"""Compile the configuration's SQL before any sync runs it (``check-config``).

Segment predicates, metric queries and destination ``source_sql`` are run over empty tables of
the contract schemas (``hull.*``, ``copper``/``copper_current``, ``planhat``/``planhat_current``)
in a locked-down in-memory DuckDB: a typo, an unknown column, a second statement or a file read
fails here with the key path that holds it, not at three in the morning.
"""

from __future__ import annotations

import datetime as dt

import duckdb
import pandas as pd

from hull_planhat_pipelines.settings import SegmentSettings, Settings
from hull_planhat_pipelines.sync.copper.records import duckdb_types
from hull_planhat_pipelines.sync.copper.schema import COPPER_OBJECTS
from hull_planhat_pipelines.sync.hull.batch import ident
from hull_planhat_pipelines.sync.hull.model import (
    ACCOUNT_UPSERT_COLUMNS,
    EVENT_COLUMNS,
    STORE_COLUMNS,
    STORE_SQL_TYPES,
    USER_UPSERT_COLUMNS,
)
from hull_planhat_pipelines.sync.hull.segments import SegmentError, validate_segments
from hull_planhat_pipelines.sync.operator_sql import OperatorSqlError, lock_down, run_select
from hull_planhat_pipelines.sync.planhat.activities import ACTIVITY_SQL_REQUIRED
from hull_planhat_pipelines.sync.planhat.records import (
    companies_frame,
    endusers_frame,
    users_frame,
)

_EPOCH = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
_EVENT_TYPES = {"occurred_at": "TIMESTAMPTZ"}


def _create(conn: duckdb.DuckDBPyConnection, table: str, columns: dict[str, str]) -> None:
    listed = ", ".join(f"{ident(c)} {t}" for c, t in columns.items())
    conn.execute(f"create table {table} ({listed})")


def _hull_columns(columns: list[str], **extra: str) -> dict[str, str]:
    return {c: STORE_SQL_TYPES.get(c, _EVENT_TYPES.get(c, "VARCHAR")) for c in columns} | extra


def contract_database() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB holding empty tables of every contract schema, locked down."""
    conn = duckdb.connect()
    for schema in ("hull", "copper", "copper_current", "planhat", "planhat_current", "ops"):
        conn.execute(f"create schema {schema}")
    _create(conn, "hull.users", _hull_columns(STORE_COLUMNS["user"], segments="VARCHAR[]"))
    _create(conn, "hull.accounts", _hull_columns(STORE_COLUMNS["account"], segments="VARCHAR[]"))
    _create(conn, "hull.events", _hull_columns(EVENT_COLUMNS))
    stamp = {"run_id": "VARCHAR", "computed_at": "TIMESTAMPTZ"}
    _create(conn, "hull.user_upserts", _hull_columns(USER_UPSERT_COLUMNS, **stamp))
    _create(conn, "hull.account_upserts", _hull_columns(ACCOUNT_UPSERT_COLUMNS, **stamp))
    for name in COPPER_OBJECTS:
        _create(conn, f"copper.{name}", duckdb_types(name))
        conn.execute(f"create view copper_current.{name} as select * from copper.{name}")
    snapshots = {  # tables of every snapshot kept; planhat_current.<model>: the latest
        "companies": ("company_snapshots", companies_frame([], fetched_at=_EPOCH)),
        "endusers": ("enduser_snapshots", endusers_frame([], fetched_at=_EPOCH)),
    }
    for name, (table, frame) in snapshots.items():
        _create_from_frame(conn, f"planhat.{table}", frame)
        conn.execute(f"create view planhat_current.{name} as select * from planhat.{table}")
    _create_from_frame(conn, "planhat.team_members", users_frame([], fetched_at=_EPOCH))
    return lock_down(conn)


def _create_from_frame(conn: duckdb.DuckDBPyConnection, table: str, frame: pd.DataFrame) -> None:
    conn.register("_empty", frame)
    casts = ", ".join(
        f"{ident(c)}::VARCHAR as {ident(c)}" if frame[c].dtype == object else ident(c)
        for c in frame.columns
    )
    conn.execute(f"create table {table} as select {casts} from _empty")
    conn.unregister("_empty")


def sql_problems(settings: Settings) -> list[tuple[str, str]]:
    """``(key path, message)`` for each segment, metric or destination query that does not
    compile against the contract schemas, or is not one SELECT."""
    problems: list[tuple[str, str]] = []
    for group in ("accounts", "users"):
        for name, predicate in getattr(settings.segments, group).items():
            try:
                validate_segments(SegmentSettings(**{group: {name: predicate}}))
            except SegmentError as exc:
                problems.append((f"segments.{group}.{name}", str(exc)))
    conn = contract_database()
    try:
        queries = (
            [
                (f"planhat.metrics.{i}.sql", metric.sql, ("external_id", "value"))
                for i, metric in enumerate(settings.planhat.metrics)
            ]
            + [
                (f"planhat.activity_queries.{i}.sql", query.sql, ACTIVITY_SQL_REQUIRED)
                for i, query in enumerate(settings.planhat.activity_queries)
            ]
            + [
                (f"destinations.{i}.source_sql", destination.source_sql, ())
                for i, destination in enumerate(settings.destinations)
            ]
        )
        for path, sql, required in queries:
            try:
                frame = run_select(conn, sql, path)
            except OperatorSqlError as exc:
                problems.append((path, str(exc).removeprefix(f"{path}: ")))
                continue
            except duckdb.Error as exc:
                problems.append((path, str(exc).splitlines()[0]))
                continue
            missing = [c for c in required if c not in frame.columns]
            if missing:
                problems.append((path, f"the query has no column {', '.join(missing)}"))
    finally:
        conn.close()
    return problems
