"""Copper tables: one transactional write per run (partition range, window and ids replaced)."""

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import pandas as pd

from hull_planhat_pipelines.sync.hull.batch import quote as _literal
from hull_planhat_pipelines.warehouse.connection import (
    PARTITION_COLUMN,
    column_schema,
    connect,
    run,
    table_exists,
    transaction,
)
from hull_planhat_pipelines.warehouse.connection import quote as _quote
from hull_planhat_pipelines.warehouse.removals import judge_in_full, remember_removals
from hull_planhat_pipelines.warehouse.tables import ensure_columns
from hull_planhat_pipelines.warehouse.views import CurrentView, create_current_view


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


ROW_HASH = "_row_hash"
"""The MD5 of a row's content (every column but ``id``, ``_fetched_at`` and itself), written with
the row: a re-fetch is compared on two narrow columns instead of reading every stored column
of the rows it touches (which, for records scattered through the table, is all of it)."""

_UNHASHED = ("id", "_fetched_at", ROW_HASH)


def _hashed_view(conn: duckdb.DuckDBPyConnection, frame_view: str) -> str:
    """A temporary view: ``frame_view`` with its ``ROW_HASH``. Columns are hashed by name, in
    name order, as JSON (unambiguous), instants as epoch microseconds (whatever the session's
    time zone). A row stored without a hash, or hashed over other columns, never matches: it
    is rewritten once."""
    described = sorted(
        (row[0], row[1])
        for row in run(conn, f"describe select * from {frame_view}")
        if row[0] not in _UNHASHED
    )
    values = ", ".join(
        f"{_literal(name)}, "
        + (f"epoch_us({_quote(name)})" if dtype.startswith("TIMESTAMP") else _quote(name))
        for name, dtype in described
    )
    content = f"json_object({values})" if values else "''"
    run(
        conn,
        f"create or replace temp view _hashed as select *,"
        f" md5_number({content}) as {_quote(ROW_HASH)} from {frame_view}",
    )
    return "_hashed"


def _same_rows(conn: duckdb.DuckDBPyConnection, schema: str, name: str, hashed: str) -> None:
    """``_same``: the ids of ``hashed`` whose stored row has the same content hash. Those rows
    stay as they are (with their ``_fetched_at``): a re-fetch of unchanged records writes
    nothing, and Hull's watermark sees only what really changed."""
    run(
        conn,
        f"create or replace temp table _same as select f.id from {hashed} f"
        f" semi join (select id, {_quote(ROW_HASH)} from {schema}.{_quote(name)}) t"
        f" on t.id = f.id and t.{_quote(ROW_HASH)} = f.{_quote(ROW_HASH)}",
    )


def write_copper_table(
    path: str,
    table: str,
    frame: pd.DataFrame,
    where: CopperSlice,
    *,
    gone_ids: Sequence[int] = (),
    current_view: CurrentView | None = None,
    types: Mapping[str, str] | None = None,
    descriptions: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Replace ``where`` and the rows of every id in ``frame`` or ``gone_ids`` with ``frame``,
    in one transaction (a failed write leaves the table as it was).

    One statement pair for a whole range, whatever the number of partitions; deleting by id
    keeps one row per record even when its date moved to another partition. The table is
    created with ``types`` (column -> DuckDB type; the frame's own types for the others, so an
    empty frame still makes a typed table) and new columns are added; inserts go by name.
    ``descriptions`` (column -> text) describe the object's own columns in the schema returned.
    A row identical to the stored one but for ``_fetched_at`` is left as stored (not rewritten).
    Returns ``{"counts": {year start: rows stored}, "schema": column metadata}`` for the run's
    partitions (UTC years), read back after the write, ``changed`` (records inserted, replaced
    or removed: 0 when the run found nothing new), ``written_ids`` and ``first`` (the table was
    created by this write).
    """
    schema, name = table.split(".")
    target = f"{schema}.{_quote(name)}"
    conn = connect(path)
    try:
        try:
            with transaction(conn):
                conn.register("_frame", frame)
                first = not table_exists(conn, schema, name)
                if first:
                    judge_in_full(conn)
                hashed = _hashed_view(conn, "_frame")
                ensure_columns(conn, schema, name, hashed, types)
                condition, params = _slice_condition(where)
                conn.register(
                    "_gone", pd.DataFrame({"id": pd.array(list(gone_ids), dtype="Int64")})
                )
                _same_rows(conn, schema, name, hashed)
                doomed = (
                    f"({condition} or id in (select id from _frame) or id in (select id from _gone))"
                    " and id not in (select id from _same)"
                )
                run(
                    conn,
                    f"create or replace temp table _removed as select distinct id from {target}"
                    f" where {doomed} and id not in (select id from _frame)",
                    params,
                )
                removed = remember_removals(conn, name, "_removed")
                run(conn, f"delete from {target} where {doomed}", params)
                written_ids = [
                    row[0]
                    for row in run(
                        conn,
                        f"insert into {target} by name select * from {hashed}"
                        " where id not in (select id from _same) returning id",
                    )
                ]
                if current_view is not None:
                    create_current_view(conn, schema, name, current_view)
        finally:
            for view in ("_frame", "_gone"):
                conn.unregister(view)  # a name never registered is ignored
            run(
                conn,
                "drop table if exists _same; drop table if exists _removed;"
                " drop view if exists _hashed",
            )
        rows = run(
            conn,
            f"select date_trunc('year', {_quote(PARTITION_COLUMN)})::date, count(*) "
            f"from {target} where {_quote(PARTITION_COLUMN)} >= ? "
            f"and {_quote(PARTITION_COLUMN)} < ? group by 1",
            [where.first, where.end],
        )
        return {
            "counts": {day: int(n) for day, n in rows},
            "schema": column_schema(conn, schema, name, descriptions),
            "changed": len(written_ids) + int(removed),
            "written_ids": written_ids,
            "first": first,
        }
    finally:
        conn.close()
