"""Operator SQL (segments, metric queries, destination ``source_sql``) runs locked down.

The configuration file is written by operators, not by us: its SQL may read the warehouse and
nothing else. So every such query must be one SELECT (no COPY, ATTACH, PRAGMA, SET, INSTALL, no
second statement), and runs on a connection whose file and network access is off and whose
configuration is locked, so that a query cannot switch it back on. DuckDB applies those
settings to the whole database instance: lock only a connection that is yours alone (a
short-lived read-only one, or an in-memory one).
"""

from __future__ import annotations

import os
import threading

import duckdb
import pandas as pd


class OperatorSqlError(ValueError):
    """Operator SQL refused before it ran (not one SELECT) or by the lockdown."""


_parsers = threading.local()


def _parser() -> duckdb.DuckDBPyConnection:
    """An empty in-memory instance that only parses, kept per thread (a connection is not
    shared between threads) and per process (a forked child's inherited one lost its
    threads): building an instance costs as much as hundreds of parses."""
    if getattr(_parsers, "pid", None) != os.getpid():
        _parsers.conn, _parsers.pid = duckdb.connect(), os.getpid()
    return _parsers.conn


def check_select(sql: str, what: str = "query") -> str:
    """``sql`` when it is exactly one SELECT statement; ``OperatorSqlError`` otherwise."""
    try:
        statements = _parser().extract_statements(sql)
    except duckdb.Error as exc:
        raise OperatorSqlError(f"{what}: {str(exc).splitlines()[0]}") from None
    if len(statements) != 1:
        raise OperatorSqlError(f"{what}: must be one SELECT statement, not {len(statements)}")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise OperatorSqlError(f"{what}: must be a SELECT, not {kind.name}")
    return sql


def is_locked_down(conn: duckdb.DuckDBPyConnection) -> bool:
    """Whether ``conn``'s database has its configuration locked (``lock_down``)."""
    # fetched whole: a pending result makes DuckDB refuse the connection's next ``register``
    rows = conn.execute("select current_setting('lock_configuration')").fetchall()
    return bool(rows) and str(rows[0][0]).lower() == "true"


def lock_down(conn: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """Turn off file and network access on ``conn``'s database and lock its configuration
    (again on a locked connection: nothing to do)."""
    if is_locked_down(conn):
        return conn
    conn.execute("set enable_external_access = false")
    conn.execute("set lock_configuration = true")
    return conn


def run_select(
    conn: duckdb.DuckDBPyConnection,
    sql: str,
    what: str = "query",
    params: list[object] | None = None,
) -> pd.DataFrame:
    """Run one operator SELECT on a locked-down connection and return its rows.

    ``conn`` must already be locked (``lock_down``); a refused file or network access raises
    ``OperatorSqlError`` saying so. ``params``: values of the ``?`` a query wrapped around the
    operator's (``as_subquery``) adds.
    """
    check_select(sql, what)
    try:
        return conn.execute(sql, params).fetchdf()
    except duckdb.PermissionException as exc:
        raise OperatorSqlError(f"{what}: {str(exc).splitlines()[0]}") from None


def as_subquery(sql: str) -> str:
    """One operator SELECT as the body of a subquery of ours: the semicolons and comments it
    ends with are cut (found by DuckDB's tokenizer, not by text search), the rest kept as
    written."""
    check_select(sql)
    end = len(sql)
    for offset, kind in reversed(duckdb.tokenize(sql)):
        if kind == duckdb.token_type.comment or sql[offset] == ";":
            end = offset
            continue
        break
    return sql[:end].rstrip()
