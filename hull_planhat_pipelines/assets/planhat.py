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
import pandas as pd

from hull_planhat_pipelines.assets.reporting import fetch_failure
from hull_planhat_pipelines.clients.http import ApiError
from hull_planhat_pipelines.clients.planhat import PlanhatClient
from hull_planhat_pipelines.policies import FETCH_RETRY, change_metadata, planhat_freshness
from hull_planhat_pipelines.resources import PlanhatResource, WarehouseResource
from hull_planhat_pipelines.settings import Settings
from hull_planhat_pipelines.sync.planhat.records import (
    COMPANY_FIELDS,
    ENDUSER_FIELDS,
    companies_frame,
    endusers_frame,
    users_frame,
)
from hull_planhat_pipelines.warehouse import replace_table, snapshot_table, write_snapshot

Clock = Callable[[], dt.datetime]

PLANHAT_GROUP = "planhat"
TEAM_MEMBERS_KEY = dg.AssetKey([PLANHAT_GROUP, "team_members"])
TEAM_MEMBERS_TABLE = "planhat.team_members"


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def snapshot_key(model: str) -> dg.AssetKey:
    """The asset of a Planhat model's snapshots: its table's name."""
    return dg.AssetKey(snapshot_table(model).split("."))


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
        except ApiError as exc:
            failure = fetch_failure(
                context, exc, asset=asset, object_type=snapshot.model, database=warehouse.database
            )
            if failure is not None:
                raise failure from None
            raise
        stored = write_snapshot(warehouse.database, snapshot.model, frame, now)
        metadata |= stored.schema
        return dg.MaterializeResult(
            metadata={
                **metadata,
                "dagster/row_count": dg.MetadataValue.int(len(frame)),
                "snapshot_at": dg.MetadataValue.timestamp(now),
                "snapshots_kept": dg.MetadataValue.int(stored.kept),
                **change_metadata(stored.changed, first=stored.first),
            }
        )

    return _snapshot


def build_planhat_assets(settings: Settings, clock: Clock = _utc_now) -> list[dg.AssetsDefinition]:
    snapshots = [build_snapshot_asset(s, settings, clock) for s in SNAPSHOTS]

    @dg.asset(
        key=TEAM_MEMBERS_KEY,
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
        context: dg.AssetExecutionContext, planhat: PlanhatResource, warehouse: WarehouseResource
    ) -> dg.MaterializeResult:
        try:
            with planhat.client() as client:
                frame = users_frame(client.list_users(), fetched_at=clock())
                metadata = _snapshot_metadata(frame, client)
        except ApiError as exc:
            failure = fetch_failure(
                context,
                exc,
                asset=TEAM_MEMBERS_KEY.to_user_string(),
                object_type="users",
                database=warehouse.database,
            )
            if failure is not None:
                raise failure from None
            raise
        written = replace_table(warehouse.database, TEAM_MEMBERS_TABLE, frame, report_change=True)
        changed, existed = written.pop("changed"), written.pop("existed")
        return dg.MaterializeResult(
            metadata={**metadata, **written, **change_metadata(changed, first=not existed)}
        )

    return [*snapshots, planhat_team_members]
