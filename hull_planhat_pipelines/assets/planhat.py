"""Planhat tables: ``planhat/company_snapshots``, ``planhat/enduser_snapshots`` (full
snapshots, kept with their history) and ``planhat/team_members``.

Planhat's API cannot filter by time and keeps no history, so every fetch is a full snapshot.
The snapshot assets are not partitioned (a day partition of the past could never be filled):
each fetch appends its rows to the table with ``snapshot_at``, the time it was taken, and
``planhat_current.<model>`` shows the latest snapshot only. History is kept for a day in full
and, before that, as the last snapshot of each UTC day (what the former day partitions held).
"""

import datetime as dt
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import dagster as dg
import duckdb
import pandas as pd

from hull_planhat_pipelines.assets.reporting import record_events
from hull_planhat_pipelines.clients.http import ApiAuthError
from hull_planhat_pipelines.clients.planhat import PlanhatClient
from hull_planhat_pipelines.policies import FETCH_RETRY, planhat_freshness
from hull_planhat_pipelines.resources import PlanhatResource, WarehouseResource
from hull_planhat_pipelines.settings import Settings
from hull_planhat_pipelines.sync.log import SyncEvent
from hull_planhat_pipelines.sync.planhat.records import (
    COMPANY_FIELDS,
    ENDUSER_FIELDS,
    companies_frame,
    endusers_frame,
    users_frame,
)
from hull_planhat_pipelines.warehouse import column_schema, connect, run, table_exists

Clock = Callable[[], dt.datetime]

PLANHAT_GROUP = "planhat"
TEAM_MEMBERS_KEY = dg.AssetKey([PLANHAT_GROUP, "team_members"])
FULL_HISTORY = dt.timedelta(days=1)
"""Every snapshot younger than this is kept; older ones only as the last of their UTC day."""


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


SNAPSHOT_TABLES = {"companies": "company_snapshots", "endusers": "enduser_snapshots"}


def snapshot_table(model: str) -> str:
    """The table holding every kept snapshot of a Planhat model (``companies``, ``endusers``)."""
    return f"{PLANHAT_GROUP}.{SNAPSHOT_TABLES[model]}"


def snapshot_key(model: str) -> dg.AssetKey:
    return dg.AssetKey(snapshot_table(model).split("."))


def latest_view(model: str) -> str:
    """The view of a model's latest snapshot: what Planhat holds, as of the last fetch."""
    return f"{PLANHAT_GROUP}_current.{model}"


def _select(fields: Iterable[str], incoming: dict[str, str]) -> list[str]:
    """Ask for every field we use, configured ones included: a listing omits unselected fields."""
    return sorted({*fields, *incoming})


def _pages(
    context: dg.AssetExecutionContext, what: str, pages: Iterator[list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for number, page in enumerate(pages, start=1):
        records.extend(page)
        context.log.info(f"{what}: page {number}, {len(records)} records so far")
    return records


def _snapshot_metadata(frame: pd.DataFrame, client: PlanhatClient) -> dict[str, Any]:
    return {
        "rows": dg.MetadataValue.int(len(frame)),
        "requests": dg.MetadataValue.int(client.attempts()),
        "retries": dg.MetadataValue.int(client.rest.stats.retries + client.analytics.stats.retries),
        "requests_by_kind": dg.MetadataValue.json(client.requests_by_kind()),
    }


def _auth_failure(context: dg.AssetExecutionContext, asset: str, exc: ApiAuthError) -> dg.Failure:
    record_events(
        context, [SyncEvent(event="incoming.job.error", reason="Unauthorized")], asset=asset
    )
    return dg.Failure(str(exc), allow_retries=False)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def store_snapshot(
    conn: duckdb.DuckDBPyConnection, model: str, frame: pd.DataFrame, taken: dt.datetime
) -> int:
    """Append the snapshot taken at ``taken``, prune the history, point the latest view at it
    (in the caller's transaction). An empty snapshot leaves the view empty: Planhat holds
    nothing. Returns how many snapshots the table keeps."""
    table = snapshot_table(model)
    schema, name = table.split(".")
    run(conn, f"create schema if not exists {schema}")
    run(conn, f"create schema if not exists {schema}_current")
    conn.register("_snapshot", frame)
    try:
        if not table_exists(conn, schema, name):
            run(conn, f"create table {table} as select * from _snapshot where false")
        existing = {c[0] for c in conn.execute(f"select * from {table} limit 0").description}
        for column, dtype, *_ in conn.execute("describe select * from _snapshot").fetchall():
            if column not in existing:  # a field added to the model: older snapshots hold null
                run(conn, f"alter table {table} add column {_quote(column)} {dtype}")
        run(conn, f"insert into {table} by name select * from _snapshot")
    finally:
        conn.unregister("_snapshot")
    at = pd.Timestamp(taken).tz_convert("UTC") if taken.tzinfo else pd.Timestamp(taken, tz="UTC")
    run(
        conn,
        f"delete from {table} where snapshot_at < ? and snapshot_at not in "
        f"(select max(snapshot_at) from {table} group by cast(timezone('UTC', snapshot_at) as date))",
        [(at - FULL_HISTORY).to_pydatetime()],
    )
    run(
        conn,
        f"create or replace view {latest_view(model)} as select * from {table} "
        f"where snapshot_at = timestamptz '{at.isoformat()}'",
    )
    return int(run(conn, f"select count(distinct snapshot_at) from {table}")[0][0])


@dataclass(frozen=True)
class Snapshot:
    """One Planhat model taken in full: a declaration, not a copy of the fetch loop."""

    model: str
    fields: tuple[str, ...]
    incoming: Callable[[Settings], dict[str, str]]
    pages: Callable[[PlanhatClient, list[str]], Iterator[list[dict[str, Any]]]]
    frame: Callable[..., pd.DataFrame]
    description: str


SNAPSHOTS = (
    Snapshot(
        "companies",
        COMPANY_FIELDS,
        lambda s: s.planhat.incoming.company_attributes,
        lambda client, select: client.iter_companies(select=select),
        companies_frame,
        "Planhat company snapshots: every company Planhat holds, one full snapshot per fetch "
        "(`snapshot_at`); `planhat_current.companies` is the latest.",
    ),
    Snapshot(
        "endusers",
        ENDUSER_FIELDS,
        lambda s: s.planhat.incoming.enduser_attributes,
        lambda client, select: client.iter_endusers(select=select),
        endusers_frame,
        "Planhat enduser snapshots: every enduser Planhat lists (not archived ones), one full "
        "snapshot per fetch (`snapshot_at`); `planhat_current.endusers` is the latest.",
    ),
)


def build_snapshot_asset(
    snapshot: Snapshot, settings: Settings, clock: Clock = _utc_now
) -> dg.AssetsDefinition:
    key = snapshot_key(snapshot.model)
    asset = key.to_user_string()

    @dg.asset(
        key=key,
        retry_policy=FETCH_RETRY,
        freshness_policy=planhat_freshness(settings),
        group_name=PLANHAT_GROUP,
        kinds={"planhat", "duckdb"},
        pool="warehouse",
        description=snapshot.description,
    )
    def _snapshot(
        context: dg.AssetExecutionContext, planhat: PlanhatResource, warehouse: WarehouseResource
    ) -> dg.MaterializeResult:
        now = clock()
        select = _select(snapshot.fields, snapshot.incoming(settings))
        try:
            with planhat.client() as client:
                records = _pages(context, asset, snapshot.pages(client, select))
                frame = snapshot.frame(records, fetched_at=now)
                metadata = _snapshot_metadata(frame, client)
        except ApiAuthError as exc:
            raise _auth_failure(context, asset, exc) from None
        conn = connect(warehouse.database)
        try:
            run(conn, "begin transaction")
            kept = store_snapshot(conn, snapshot.model, frame, now)
            schema, table = snapshot_table(snapshot.model).split(".")
            metadata |= column_schema(conn, schema, table)
            run(conn, "commit")
        except Exception:
            run(conn, "rollback")
            raise
        finally:
            conn.close()
        return dg.MaterializeResult(
            metadata={
                **metadata,
                "dagster/row_count": dg.MetadataValue.int(len(frame)),
                "snapshot_at": dg.MetadataValue.timestamp(now),
                "snapshots_kept": dg.MetadataValue.int(kept),
            }
        )

    return _snapshot


def build_planhat_assets(settings: Settings, clock: Clock = _utc_now) -> list[dg.AssetsDefinition]:
    snapshots = [build_snapshot_asset(s, settings, clock) for s in SNAPSHOTS]

    @dg.asset(
        key=TEAM_MEMBERS_KEY,
        io_manager_key="warehouse_io_manager",
        retry_policy=FETCH_RETRY,
        freshness_policy=planhat_freshness(settings),
        group_name=PLANHAT_GROUP,
        kinds={"planhat", "duckdb"},
        pool="warehouse",
        description=(
            "Planhat team members (owners, not customers): the valid owner and co-owner ids "
            "accounts are checked against; replaced by each fetch."
        ),
    )
    def planhat_team_members(
        context: dg.AssetExecutionContext, planhat: PlanhatResource
    ) -> pd.DataFrame:
        try:
            with planhat.client() as client:
                frame = users_frame(client.list_users(), fetched_at=clock())
                context.add_output_metadata(_snapshot_metadata(frame, client))
        except ApiAuthError as exc:
            raise _auth_failure(context, TEAM_MEMBERS_KEY.to_user_string(), exc) from None
        return frame

    return [*snapshots, planhat_team_members]
