"""The current views, declared in one place: what a reader queries for "now".

- ``copper_current.<object>``: the newest row per Copper ``id`` across the day partitions of
  ``copper.<object>`` (by ``COPPER_CURRENT``), rebuilt in the same transaction as each write.
- ``planhat_current.<model>``: the latest full snapshot of ``planhat.<model>_snapshots``
  (``companies``, ``endusers``), repointed in the same transaction as each snapshot.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import duckdb

from hull_planhat_pipelines.warehouse.connection import quote, run


@dataclass(frozen=True)
class CurrentView:
    """Newest row per ``key``, ordered by ``order_by`` (newest first, nulls last)."""

    key: str
    order_by: tuple[str, ...]


COPPER_CURRENT = CurrentView("id", ("_fetched_at", "date_modified"))
"""Every Copper table's current view: the last fetched version of each record. A write keeps one
row per id already; the view stays the stable name downstream reads (and older tables may hold
moved rows)."""

PLANHAT_SNAPSHOT_TABLES = {"companies": "company_snapshots", "endusers": "enduser_snapshots"}
"""Planhat models kept as full snapshots, by the table holding their history."""


def current_view_sql(schema: str, table: str, key: str, order_by: Sequence[str]) -> str:
    order = ", ".join(f"{quote(c)} desc nulls last" for c in order_by) or "1"
    return (
        f"create or replace view {schema}_current.{table} as "
        f"select * from {schema}.{table} "
        f"qualify row_number() over (partition by {quote(key)} order by {order}) = 1"
    )


def create_current_view(
    conn: duckdb.DuckDBPyConnection, schema: str, table: str, view: CurrentView
) -> None:
    """(Re)create ``<schema>_current.<table>`` in the caller's transaction."""
    run(conn, f"create schema if not exists {schema}_current")
    run(conn, current_view_sql(schema, table, view.key, list(view.order_by)))


def snapshot_table(model: str) -> str:
    """The table holding every kept snapshot of a Planhat model (``companies``, ``endusers``)."""
    return f"planhat.{PLANHAT_SNAPSHOT_TABLES[model]}"


def latest_view(model: str) -> str:
    """The view of a model's latest snapshot: what Planhat holds, as of the last fetch."""
    return f"planhat_current.{model}"


def point_latest_view(conn: duckdb.DuckDBPyConnection, model: str, at_iso: str) -> None:
    """Point ``planhat_current.<model>`` at the snapshot taken at ``at_iso`` (caller's
    transaction); an empty snapshot leaves the view empty: Planhat holds nothing."""
    run(conn, "create schema if not exists planhat_current")
    run(
        conn,
        f"create or replace view {latest_view(model)} as select * from {snapshot_table(model)} "
        f"where snapshot_at = timestamptz '{at_iso}'",
    )
