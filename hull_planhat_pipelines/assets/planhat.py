"""Planhat snapshot tables: ``planhat/companies``, ``planhat/endusers``, ``planhat/users``.

Planhat's API cannot filter by time, so every fetch is a full snapshot; partition D holds the
latest snapshot taken on day D. Planhat keeps no history, so a past partition cannot be
materialized: asking for one fails with a message saying why, rather than silently writing
today's data under yesterday's date.
"""

import datetime as dt
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import dagster as dg
import pandas as pd

from hull_planhat_pipelines.clients.http import ApiAuthError
from hull_planhat_pipelines.clients.planhat import PlanhatClient
from hull_planhat_pipelines.policies import FETCH_RETRY, planhat_freshness
from hull_planhat_pipelines.resources import PlanhatResource
from hull_planhat_pipelines.settings import Settings
from hull_planhat_pipelines.sync.log import SyncEvent
from hull_planhat_pipelines.sync.planhat_records import (
    COMPANY_FIELDS,
    ENDUSER_FIELDS,
    companies_frame,
    endusers_frame,
    users_frame,
)
from hull_planhat_pipelines.sync_log import record_events
from hull_planhat_pipelines.warehouse import keep_current_view

Clock = Callable[[], dt.datetime]


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def refuse_past_partitions(keys: Iterable[str], today: dt.date) -> None:
    """Raise unless the only partition asked for is today's."""
    past = sorted(k for k in keys if k != today.isoformat())
    if past:
        raise dg.Failure(
            f"Planhat keeps no history: partition(s) {', '.join(past[:5])}"
            f"{' ...' if len(past) > 5 else ''} lie in the past and cannot be fetched again. "
            f"Only today's partition ({today.isoformat()}) holds a snapshot that can be taken now.",
            allow_retries=False,
        )


def _select(fields: Iterable[str], incoming: dict[str, str]) -> list[str]:
    """Ask for every field we use, configured ones included: a listing omits unselected fields."""
    return sorted({*fields, *incoming})


def _pages(
    context: dg.AssetExecutionContext, what: str, pages: Iterator[list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for number, page in enumerate(pages, start=1):
        records.extend(page)
        context.log.info(f"planhat/{what}: page {number}, {len(records)} records so far")
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


SNAPSHOT_CURRENT_VIEW = ("_id", ["partition_date", "_fetched_at"])  # newest snapshot's row


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
        "Full snapshot of Planhat companies taken on the partition's day.",
    ),
    Snapshot(
        "endusers",
        ENDUSER_FIELDS,
        lambda s: s.planhat.incoming.enduser_attributes,
        lambda client, select: client.iter_endusers(select=select),
        endusers_frame,
        "Full snapshot of Planhat endusers (archived ones are not listed by Planhat).",
    ),
)


def build_snapshot_asset(
    snapshot: Snapshot,
    settings: Settings,
    partitions_def: dg.PartitionsDefinition,
    clock: Clock = _utc_now,
) -> dg.AssetsDefinition:
    asset = f"planhat/{snapshot.model}"

    @dg.asset(
        key=["planhat", snapshot.model],
        partitions_def=partitions_def,
        io_manager_key="warehouse_io_manager",
        retry_policy=FETCH_RETRY,
        freshness_policy=planhat_freshness(settings),
        group_name="planhat",
        kinds={"duckdb"},
        pool="warehouse",
        description=snapshot.description,
    )
    def _snapshot(context: dg.AssetExecutionContext, planhat: PlanhatResource) -> pd.DataFrame:
        now = clock()
        refuse_past_partitions(context.partition_keys, now.date())
        select = _select(snapshot.fields, snapshot.incoming(settings))
        try:
            with planhat.client() as client:
                records = _pages(context, snapshot.model, snapshot.pages(client, select))
                frame = snapshot.frame(records, fetched_at=now, partition_date=now.date())
                context.add_output_metadata(_snapshot_metadata(frame, client))
        except ApiAuthError as exc:
            raise _auth_failure(context, asset, exc) from None
        return frame

    keep_current_view(["planhat", snapshot.model], *SNAPSHOT_CURRENT_VIEW)
    return _snapshot


def build_planhat_assets(
    settings: Settings, partitions_def: dg.PartitionsDefinition, clock: Clock = _utc_now
) -> list[dg.AssetsDefinition]:
    snapshots = [build_snapshot_asset(s, settings, partitions_def, clock) for s in SNAPSHOTS]

    @dg.asset(
        key=["planhat", "users"],
        io_manager_key="warehouse_io_manager",
        retry_policy=FETCH_RETRY,
        freshness_policy=planhat_freshness(settings),
        group_name="planhat",
        kinds={"duckdb"},
        pool="warehouse",
        description=(
            "Planhat team members: the valid owner and co-owner ids accounts are checked against."
        ),
    )
    def planhat_users(context: dg.AssetExecutionContext, planhat: PlanhatResource) -> pd.DataFrame:
        try:
            with planhat.client() as client:
                frame = users_frame(client.list_users(), fetched_at=clock())
                context.add_output_metadata(_snapshot_metadata(frame, client))
        except ApiAuthError as exc:
            raise _auth_failure(context, "planhat/users", exc) from None
        return frame

    return [*snapshots, planhat_users]
