"""Copper raw tables: ``copper/{leads,people,companies,opportunities,activities}``.

One asset per declared Copper object, all built by one factory: an object is added by a
declaration in ``sync/copper/schema.py``, not by a new fetch loop. Each partition is one UTC year
of the object's windowing date (each row keeps its own UTC day in ``partition_date``).

A run over a partition range (a backfill, "fetch all") walks the whole range with one date
cursor and replaces those years in one write; a run tagged with a since/until window (the
poll's) fetches only the records dated in it and upserts them by id, leaving the rest of the
year alone. The table is written by ``warehouse.write_copper_table``, not an I/O manager: one
transaction per run, whatever the number of partitions.
"""

import datetime as dt
import time
from collections.abc import Iterable
from typing import Any

import dagster as dg
import pandas as pd
from tqdm import tqdm

from hull_planhat_pipelines.assets.reporting import fetch_failure
from hull_planhat_pipelines.clients.copper import COPPER_OBJECTS, CopperClient, CopperObject
from hull_planhat_pipelines.clients.http import ApiError
from hull_planhat_pipelines.policies import FETCH_RETRY, change_metadata, copper_freshness
from hull_planhat_pipelines.resources import CopperResource, WarehouseResource
from hull_planhat_pipelines.settings import Settings
from hull_planhat_pipelines.sync.copper.polling import parse_window
from hull_planhat_pipelines.sync.copper.records import (
    connect_targets,
    duckdb_types,
    is_deleted_stub,
    records_frame,
)
from hull_planhat_pipelines.warehouse import COPPER_CURRENT, CopperSlice, write_copper_table

PROGRESS_LOG_SECONDS = 15.0
"""A long fetch logs its progress this often (the progress bar, when shown, follows each page)."""
PREVIEW_COLUMNS = ["id", "name", "primary_email", "date_modified", "partition_date"]


def _unix(moment: dt.datetime) -> int:
    return int(moment.timestamp())


def fetch_window(
    window: dg.TimeWindow,
    first_partition_start: dt.datetime,
    *,
    horizon_end: int | None = None,
    since: int | None = None,
    until: int | None = None,
) -> tuple[int | None, int]:
    """Inclusive Unix-second bounds of a run's fetch: its partitions' window (the first
    partition is open below), no later than ``horizon_end`` (the activity horizon's last
    second: a year reaches past it), narrowed to [``since``, ``until``] for an incremental run.
    """
    start = None if window.start <= first_partition_start else _unix(window.start)
    end = _unix(window.end) - 1
    if horizon_end is not None:
        end = min(end, horizon_end)
    if since is not None and (start is not None or since > _unix(first_partition_start)):
        start = since if start is None else max(start, since)
    if until is not None:
        end = min(end, until)
    return start, end


def horizon_end(settings: Settings, now: dt.datetime) -> int:
    """The last second of the activity horizon's day: nothing dated later is fetched."""
    day = now.astimezone(dt.UTC).date() + dt.timedelta(days=settings.copper.activity_horizon_days)
    return _unix(dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.UTC)) - 1


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
    start: int | None,
    end: int,
) -> tuple[pd.DataFrame, list[int], dict[str, Any]]:
    metadata = client.metadata(run=context.run_id)
    type_ids = _activity_type_ids(metadata) if obj.name == "activities" else None
    records: list[dict[str, Any]] = []
    pages = 0
    logged = time.monotonic()
    of_total = ""
    bar = tqdm(desc=f"copper/{obj.name}", unit=" records", disable=not progress_bar, leave=False)
    with bar:
        for page in client.search(obj, start=start, end=end, activity_type_ids=type_ids):
            pages += 1
            records.extend(page.records)
            if page.total is not None:
                bar.total = page.total
            bar.update(len(page.records))
            of_total = f" of about {page.total}" if page.total is not None else ""
            if time.monotonic() - logged >= PROGRESS_LOG_SECONDS:
                # each Dagster log line is an event-log write: progress, not one per page
                logged = time.monotonic()
                context.log.info(
                    f"copper/{obj.name}: page {page.number}, {len(records)} records so far"
                    f"{of_total}"
                )
    context.log.info(f"copper/{obj.name}: {pages} pages, {len(records)} records")
    gone = sorted({int(r["id"]) for r in records if is_deleted_stub(r) and r.get("id") is not None})
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
    return (
        frame,
        gone,
        {
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
        },
    )


def partition_metadata(
    frame: pd.DataFrame,
    keys: list[str],
    stored: dict[dt.date, int],
    *,
    incremental: bool,
) -> dict[str, dict[str, Any]]:
    """Per partition (UTC year) of a run: its own figures, never the run's totals.

    ``rows`` and ``dagster/partition_row_count`` are the rows the partition holds after the
    write (read back from the table); ``rows_written`` are the rows this run wrote into it:
    all of them after a range run, which replaces its years, and only the changed records
    after an incremental run, which upserts them (``write`` says which). The preview shows
    the rows this run wrote into that year."""
    if len(frame):
        years = pd.to_datetime(frame["partition_date"]).dt.year  # strftime: 1 s a first load
        groups = {str(int(year)): rows for year, rows in frame.groupby(years)}
    else:
        groups = {}
    found: dict[str, dict[str, Any]] = {}
    for key in keys:
        rows = groups.get(key)
        written = 0 if rows is None else len(rows)
        count = stored.get(dt.date(int(key), 1, 1), 0)
        entry: dict[str, Any] = {
            "rows": dg.MetadataValue.int(count),
            "dagster/partition_row_count": dg.MetadataValue.int(count),
            "rows_written": dg.MetadataValue.int(written),
            "write": dg.MetadataValue.text(
                "upsert of the records changed in the run's window (the year's other rows kept)"
                if incremental
                else "replaced (the whole year)"
            ),
        }
        if rows is not None:
            entry["preview"] = _preview(rows)
        found[key] = entry
    return found


def _require_partitions(context: dg.AssetExecutionContext, asset: str) -> None:
    """A launch without a partition (a script or a GraphQL client that forgot one; the UI
    always asks) fails at once and is not retried: every retry would fail the same way."""
    if context.has_partition_key or context.has_partition_key_range:
        return
    partitions = context.assets_def.partitions_def
    assert partitions is not None  # every Copper asset is partitioned
    span = f"{partitions.get_first_partition_key()}..{partitions.get_last_partition_key()}"
    raise dg.Failure(
        f"{asset} is partitioned by UTC year ({span}): launch it with a partition key, or with "
        "a partition range as a backfill or the fetch-all schedule does.",
        allow_retries=False,
    )


def build_copper_asset(
    obj: CopperObject, settings: Settings, partitions_def: dg.PartitionsDefinition
) -> dg.AssetsDefinition:
    @dg.asset(
        key=["copper", obj.name],
        partitions_def=partitions_def,
        backfill_policy=dg.BackfillPolicy.single_run(),
        retry_policy=FETCH_RETRY,
        freshness_policy=copper_freshness(settings),
        group_name="copper",
        kinds={"duckdb"},
        pool="warehouse",
        description=(
            f"Copper {obj.name}: one row per record whose {obj.date_field} falls in the "
            "partition's UTC year (`partition_date` is the row's UTC day; the first partition "
            "also holds everything older). A range run replaces its years; the poll's runs "
            "upsert the changed records by id. Typed columns, the source record whole "
            "(`record`) and its resolved fields (`fields`)."
        ),
    )
    def _copper_object(
        context: dg.AssetExecutionContext, copper: CopperResource, warehouse: WarehouseResource
    ) -> dg.MaterializeResult:
        asset = f"copper/{obj.name}"
        _require_partitions(context, asset)
        partitions_def = context.assets_def.partitions_def
        assert isinstance(partitions_def, dg.TimeWindowPartitionsDefinition)
        window = context.partition_time_window
        since, until, incremental = parse_window(dict(context.run.tags), obj.name)
        start, end = fetch_window(
            window,
            partitions_def.start,
            horizon_end=horizon_end(settings, dt.datetime.now(dt.UTC)),
            since=since,
            until=until,
        )
        try:
            with copper.client() as client:
                frame, gone, metadata = _fetch(
                    context, client, obj, settings, copper.progress_bar, start, end
                )
        except ApiError as exc:
            failure = fetch_failure(
                context, exc, asset=asset, object_type=obj.name, database=warehouse.database
            )
            if failure is not None:
                raise failure from None
            raise
        where = CopperSlice(
            first=window.start.date(),
            end=window.end.date(),
            date_column=obj.date_field if incremental else None,
            since=start if incremental else None,
            until=end if incremental else None,
        )
        written = write_copper_table(
            warehouse.database,
            f"copper.{obj.name}",
            frame,
            where,
            gone_ids=gone,
            current_view=COPPER_CURRENT,
            types=duckdb_types(obj),
            descriptions={c.name: c.description for c in obj.columns if c.description},
        )
        keys = list(context.partition_keys)
        metadata["run_write"] = dg.MetadataValue.text(
            f"upserted {len(frame)} changed records into {len(keys)} partition(s)"
            if incremental
            else f"replaced {len(keys)} partition(s) in one write"
        )
        metadata |= change_metadata(written["changed"], first=written["first"])
        # the run's figures and the table's columns, on each partition
        context.add_asset_metadata({**metadata, **written["schema"]})
        stored = written["counts"]
        rewritten = frame[frame["id"].isin(written["written_ids"])] if len(frame) else frame
        for key, entry in partition_metadata(
            rewritten, keys, stored, incremental=incremental
        ).items():
            context.add_asset_metadata(entry, partition_key=key)
        return dg.MaterializeResult()

    return _copper_object


def build_copper_assets(
    settings: Settings,
    partitions_def: dg.PartitionsDefinition,
    objects: Iterable[CopperObject] | None = None,
) -> list[dg.AssetsDefinition]:
    """One asset per declared object (default: ``COPPER_OBJECTS``)."""
    chosen = COPPER_OBJECTS.values() if objects is None else objects
    return [build_copper_asset(obj, settings, partitions_def) for obj in chosen]
