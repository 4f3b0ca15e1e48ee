"""Copper raw tables: ``copper/{leads,people,companies,opportunities,activities}``.

One asset per declared Copper object, all built by one factory: an object is added by a
declaration in ``sync/copper_schema.py``, not by a new fetch loop. Each partition is one UTC day of
the object's windowing date; a run over a partition range (a backfill, "fetch all") walks the
whole range with one date cursor instead of one search per day.
"""

import datetime as dt
from collections.abc import Iterable
from typing import Any

import dagster as dg
import pandas as pd
from tqdm import tqdm

from hull_planhat_pipelines.clients.copper import COPPER_OBJECTS, CopperClient, CopperObject
from hull_planhat_pipelines.clients.http import ApiAuthError, ApiError
from hull_planhat_pipelines.policies import FETCH_RETRY, copper_freshness
from hull_planhat_pipelines.resources import CopperResource
from hull_planhat_pipelines.settings import Settings
from hull_planhat_pipelines.sync.copper_records import connect_targets, records_frame
from hull_planhat_pipelines.sync.log import SyncEvent
from hull_planhat_pipelines.sync_log import record_events
from hull_planhat_pipelines.warehouse import keep_current_view

PREVIEW_COLUMNS = ["id", "name", "primary_email", "date_modified", "partition_date"]


def _unix(moment: dt.datetime) -> int:
    return int(moment.timestamp())


def fetch_window(
    window: dg.TimeWindow, first_partition_start: dt.datetime
) -> tuple[int | None, int]:
    """Inclusive Unix-second bounds of a partition window; the first partition is open below."""
    start = None if window.start <= first_partition_start else _unix(window.start)
    return start, _unix(window.end) - 1


def _activity_type_ids(metadata: Any) -> list[int]:
    """Every user activity type (disabled ones too): events are chosen downstream, by name."""
    return [t.id for t in metadata.activity_types.user]


def _preview(frame: pd.DataFrame) -> dg.MetadataValue:
    columns = [c for c in PREVIEW_COLUMNS if c in frame.columns]
    return dg.MetadataValue.md(frame[columns].head(10).to_markdown(index=False))


def _fetch(
    context: dg.AssetExecutionContext,
    client: CopperClient,
    obj: CopperObject,
    settings: Settings,
    progress_bar: bool,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    partitions_def = context.assets_def.partitions_def
    assert isinstance(partitions_def, dg.TimeWindowPartitionsDefinition)
    first_start = partitions_def.start
    start, end = fetch_window(context.partition_time_window, first_start)
    metadata = client.metadata()
    type_ids = _activity_type_ids(metadata) if obj.name == "activities" else None
    records: list[dict[str, Any]] = []
    pages = 0
    bar = tqdm(desc=f"copper/{obj.name}", unit=" records", disable=not progress_bar, leave=False)
    with bar:
        for page in client.search(obj, start=start, end=end, activity_type_ids=type_ids):
            pages += 1
            records.extend(page.records)
            if page.total is not None:
                bar.total = page.total
            bar.update(len(page.records))
            of_total = f" of about {page.total}" if page.total is not None else ""
            context.log.info(
                f"copper/{obj.name}: page {page.number}, {len(records)} records so far{of_total}"
            )
    targets = connect_targets(obj, records, metadata)
    record_names = {kind: client.names(kind, sorted(ids)) for kind, ids in targets.items()}
    frame = records_frame(
        obj,
        records,
        metadata,
        record_names=record_names,
        fetched_at=dt.datetime.now(dt.UTC),
        partition_start=settings.copper.start_date,
        close_date_format=settings.copper.close_date_format,
        opportunity_type_field=settings.copper.opportunity_type_field,
    )
    stats = client.stats.snapshot()
    return frame, {
        "run_rows": dg.MetadataValue.int(len(frame)),
        "run_pages_fetched": dg.MetadataValue.int(pages),
        "run_requests": dg.MetadataValue.int(stats["requests"]),
        "run_retries": dg.MetadataValue.int(stats["retries"]),
        "run_window_start": (
            dg.MetadataValue.timestamp(float(start))
            if start is not None
            else dg.MetadataValue.text("open (everything before)")
        ),
        "run_window_end": dg.MetadataValue.timestamp(float(end)),
    }


def partition_metadata(frame: pd.DataFrame, keys: list[str]) -> dict[str, dict[str, Any]]:
    """Per partition of a run: its own row count and preview, never the run's totals.

    A range run (a backfill, "fetch all") materializes every partition of its range at once;
    each partition's metadata counts the rows of that UTC day only (the ``run_*`` entries are
    the run's figures, the same on every partition of the run)."""
    days = frame["partition_date"].astype(str) if len(frame) else pd.Series(dtype=str)
    groups = {day: rows for day, rows in frame.groupby(days)} if len(frame) else {}
    found: dict[str, dict[str, Any]] = {}
    for key in keys:
        rows = groups.get(key)
        count = 0 if rows is None else len(rows)
        entry: dict[str, Any] = {
            "rows": dg.MetadataValue.int(count),
            "dagster/partition_row_count": dg.MetadataValue.int(count),
        }
        if rows is not None:
            entry["preview"] = _preview(rows)
        found[key] = entry
    return found


def build_copper_asset(
    obj: CopperObject, settings: Settings, partitions_def: dg.PartitionsDefinition
) -> dg.AssetsDefinition:
    @dg.asset(
        key=["copper", obj.name],
        partitions_def=partitions_def,
        backfill_policy=dg.BackfillPolicy.single_run(),
        retry_policy=FETCH_RETRY,
        freshness_policy=copper_freshness(settings),
        io_manager_key="warehouse_io_manager",
        group_name="copper",
        kinds={"duckdb"},
        pool="warehouse",
        description=(
            f"Copper {obj.name}: one row per record whose {obj.date_field} falls on the partition's "
            "UTC day (the first partition also holds everything older). Typed columns, the "
            "source record whole (`record`) and its resolved fields (`fields`)."
        ),
    )
    def _copper_object(context: dg.AssetExecutionContext, copper: CopperResource) -> pd.DataFrame:
        asset = f"copper/{obj.name}"
        try:
            with copper.client() as client:
                frame, metadata = _fetch(context, client, obj, settings, copper.progress_bar)
        except ApiAuthError as exc:
            record_events(
                context,
                [
                    SyncEvent(
                        event="incoming.job.error", object_type=obj.name, reason="Unauthorized"
                    )
                ],
                asset=asset,
            )
            raise dg.Failure(str(exc), allow_retries=False) from None
        except ApiError as exc:
            record_events(
                context,
                [SyncEvent(event="incoming.job.error", object_type=obj.name, reason=str(exc))],
                asset=asset,
            )
            raise
        context.add_asset_metadata(metadata)  # the run's figures, on each partition
        for key, entry in partition_metadata(frame, list(context.partition_keys)).items():
            context.add_asset_metadata(entry, partition_key=key)
        return frame

    # the latest fetch holds the current version (an activity moved to an earlier date keeps an
    # older date_modified than its stale row in the old partition)
    keep_current_view(["copper", obj.name], "id", ["_fetched_at", "date_modified"])
    return _copper_object


def build_copper_assets(
    settings: Settings,
    partitions_def: dg.PartitionsDefinition,
    objects: Iterable[CopperObject] | None = None,
) -> list[dg.AssetsDefinition]:
    """One asset per declared object (default: ``COPPER_OBJECTS``)."""
    chosen = COPPER_OBJECTS.values() if objects is None else objects
    return [build_copper_asset(obj, settings, partitions_def) for obj in chosen]
