"""Tables written whole: each write replaces the table (Planhat team members, payloads)."""

from collections.abc import Mapping
from typing import Any

import duckdb
import pandas as pd

from hull_planhat_pipelines.warehouse.connection import (
    column_schema,
    connect,
    quote,
    run,
    table_exists,
    transaction,
)


def ensure_columns(
    conn: duckdb.DuckDBPyConnection,
    schema: str,
    name: str,
    frame_view: str,
    types: Mapping[str, str] | None = None,
) -> None:
    """Create ``schema.name`` typed like the registered ``frame_view`` (``types`` overriding a
    column's type; an empty frame still makes a typed table) and add the columns it lacks, so
    inserts by name never shift values between columns."""
    target = f"{schema}.{quote(name)}"
    run(conn, f"create schema if not exists {schema}")
    described = [
        (column, "VARCHAR" if dtype in ('"NULL"', "NULL") else dtype)
        for column, dtype, *_ in run(conn, f"describe select * from {frame_view}")
    ]
    if not table_exists(conn, schema, name):
        declared = dict(types or {})
        columns = ", ".join(f"{quote(c)} {declared.get(c, dtype)}" for c, dtype in described)
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
            run(conn, f"alter table {target} add column {quote(column)} {dtype}")


def differing_rows(
    conn: duckdb.DuckDBPyConnection,
    before: str,
    after: str,
    ignore: tuple[str, ...] = ("_fetched_at",),
) -> int:
    """How many rows differ between two relations (SQL names or subqueries), compared on the
    columns of ``after`` but ``ignore``: rows of either side without an identical row on the
    other, duplicates counted. 0: the same content, whatever the fetch times."""
    names = [row[0] for row in run(conn, f"describe select * from {after}")]
    held = {row[0] for row in run(conn, f"describe select * from {before}")}
    if not set(names) <= held:  # a column the rows before did not have: every row differs
        return int(
            run(conn, f"select (select count(*) from {after}) + (select count(*) from {before})")[
                0
            ][0]
        )
    chosen = ", ".join(quote(name) for name in names if name not in ignore)
    if not chosen:
        return 0
    return int(
        run(
            conn,
            f"select count(*) from ((select {chosen} from {after} except all"
            f" select {chosen} from {before}) union all (select {chosen} from {before}"
            f" except all select {chosen} from {after}))",
        )[0][0]
    )


def replace_table(
    path: str, table: str, frame: pd.DataFrame, *, report_change: bool = False
) -> dict[str, Any]:
    """Replace every row of ``table`` with ``frame`` in one transaction (a failed write leaves
    the table as it was). Returns ``dagster/row_count`` and ``dagster/column_schema``; with
    ``report_change``, also ``changed`` (rows that differ from those replaced, fetch times
    aside) and ``existed`` (the table was there before)."""
    schema, name = table.split(".")
    conn = connect(path)
    change: dict[str, Any] = {}
    try:
        conn.register("_frame", frame)
        try:
            with transaction(conn):
                existed = table_exists(conn, schema, name)
                ensure_columns(conn, schema, name, "_frame")
                if report_change:
                    before = f"{schema}.{quote(name)}"
                    change = {
                        "changed": differing_rows(conn, before, "_frame")
                        if existed
                        else len(frame),
                        "existed": existed,
                    }
                run(conn, f"delete from {schema}.{quote(name)}")
                if len(frame):
                    run(conn, f"insert into {schema}.{quote(name)} by name select * from _frame")
                metadata = column_schema(conn, schema, name)
        finally:
            conn.unregister("_frame")
    finally:
        conn.close()
    return {"dagster/row_count": len(frame), **metadata, **change}
