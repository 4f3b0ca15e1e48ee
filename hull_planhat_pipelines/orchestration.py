"""Partitions, jobs, schedules and sensors: when things run, never what they do."""

import datetime as dt
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import dagster as dg
import duckdb
import pandas as pd
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from hull_planhat_pipelines.clients.copper import COPPER_OBJECTS
from hull_planhat_pipelines.clients.http import ApiAuthError, ApiError
from hull_planhat_pipelines.resources import CopperResource
from hull_planhat_pipelines.settings import Settings
from hull_planhat_pipelines.sync.log import SyncEvent, events_frame
from hull_planhat_pipelines.sync.polling import CopperCursor, interval_cron, plan_incremental_runs
from hull_planhat_pipelines.warehouse import append_sync_log

log = logging.getLogger(__name__)

COPPER_GROUP = "copper"
PLANHAT_GROUP = "planhat"
SORTABLE_OBJECTS = [name for name, obj in COPPER_OBJECTS.items() if obj.sort_by]
"""Objects the sensor can ask "what is your newest change?" (activities have no sort)."""


def daily_partitions(settings: Settings) -> dg.DailyPartitionsDefinition:
    """UTC days from ``copper.start_date`` up to and including today (``end_offset=1``)."""
    return dg.DailyPartitionsDefinition(
        start_date=settings.copper.start_date.isoformat(), timezone="UTC", end_offset=1
    )


def copper_partitions(settings: Settings) -> dg.DailyPartitionsDefinition:
    """Copper's UTC days: from ``copper.start_date`` up to ``copper.activity_horizon_days``
    after today. Activities are windowed by their date and a meeting planned for next week is
    dated next week: its day must exist to hold it. The other objects are windowed by
    ``date_modified``, never in the future, so their days ahead stay empty (cheap: a range run
    walks its whole range with one cursor, not one search per day)."""
    return dg.DailyPartitionsDefinition(
        start_date=settings.copper.start_date.isoformat(),
        timezone="UTC",
        end_offset=1 + settings.copper.activity_horizon_days,
    )


def copper_keys(names: Sequence[str] | None = None) -> list[dg.AssetKey]:
    return [dg.AssetKey(["copper", n]) for n in (names or list(COPPER_OBJECTS))]


def range_tags(first: str, last: str) -> dict[str, str]:
    """Tags that make one run cover a partition range (what a single-run backfill does)."""
    return {ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last}


def copper_sync_job(partitions_def: dg.PartitionsDefinition) -> UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        "copper_sync",
        selection=dg.AssetSelection.groups(COPPER_GROUP),
        partitions_def=partitions_def,
        description="Fetch Copper objects into their daily partitions.",
    )


# -- the incremental poll ------------------------------------------------------------------------
SENSOR_LOG_WAITS = (0.1, 0.3, 0.6)
"""Seconds between attempts to write a sensor's error row while another step holds the
warehouse: about a second in all, so the tick stays short; then the row is given up (logged)."""


def log_sensor_error(
    reason: str,
    *,
    sensor: str,
    tick: str,
    sleeper: Callable[[float], None] = time.sleep,
    writer: Callable[[pd.DataFrame], None] | None = None,
) -> bool:
    """One ``incoming.job.error`` row in ``ops.sync_log``; a busy warehouse is retried briefly.
    Never raises: a tick must not fail for its own log line. True when the row was written."""
    writer = writer or (lambda rows: append_sync_log(rows, wait=0.0))
    frame = events_frame(
        [SyncEvent(event="incoming.job.error", object_type="copper", reason=reason)],
        run_id=tick,
        asset=sensor,
    )
    for wait in (*SENSOR_LOG_WAITS, None):
        try:
            writer(frame)
            return True
        except (duckdb.IOException, duckdb.TransactionException) as exc:
            if wait is None:
                log.warning("%s: incoming.job.error (%s) not stored: %s", sensor, reason, exc)
                return False
            sleeper(wait)
        except Exception as exc:  # the warehouse is optional here; the skip reason says it all
            log.warning("%s: incoming.job.error (%s) not stored: %s", sensor, reason, exc)
            return False
    return False


def build_copper_incremental_sensor(
    settings: Settings,
    job: UnresolvedAssetJobDefinition,
    clock: Callable[[], float] = time.time,
    sleeper: Callable[[float], None] = time.sleep,
) -> dg.SensorDefinition:
    @dg.sensor(
        name="copper_incremental_sensor",
        job=job,
        minimum_interval_seconds=settings.copper.poll_minutes * 60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Asks Copper one cheap question per object (its newest change, page size 1) and "
            "requests runs only for the day partitions that changed."
        ),
    )
    def copper_incremental_sensor(
        context: dg.SensorEvaluationContext, copper: CopperResource
    ) -> dg.SensorResult | dg.SkipReason:
        cursor = CopperCursor.parse(context.cursor)
        now = int(clock())
        try:
            with copper.client() as client:
                newest = {name: client.newest_modified(name) for name in SORTABLE_OBJECTS}
                since = cursor.activities_checked
                activities_changed = since is None or client.activity_exists_since(since, until=now)
        except ApiError as exc:
            # The cursor is left as it was: the tick after the key is fixed picks up from here.
            reason = "Unauthorized" if isinstance(exc, ApiAuthError) else str(exc)
            tick = f"sensor:copper_incremental_sensor:{now}"
            log_sensor_error(reason, sensor="copper_incremental_sensor", tick=tick, sleeper=sleeper)
            context.log.error(f"incoming.job.error: {reason}")
            return dg.SkipReason(
                f"Copper poll failed ({reason}): {exc}. Nothing requested; the next tick "
                "retries from the same cursor."
            )
        runs, advanced = plan_incremental_runs(
            cursor,
            newest,
            activities_changed,
            now,
            start_date=settings.copper.start_date,
            rescan_days=settings.copper.activity_rescan_days,
            rescan_minutes=settings.copper.activity_rescan_minutes,
            horizon_days=settings.copper.activity_horizon_days,
        )
        fingerprint = json.dumps(newest, sort_keys=True)
        requests = []
        for run in runs:
            key = run.run_key(fingerprint if run.reason == "modified records" else str(now))
            context.log.info(
                f"{run.reason}: {', '.join(run.objects)} {run.first_day}..{run.last_day}"
            )
            requests.append(
                dg.RunRequest(
                    run_key=key,
                    asset_selection=copper_keys(run.objects),
                    tags={
                        **range_tags(run.first_day.isoformat(), run.last_day.isoformat()),
                        "hull_planhat/trigger": run.reason,
                    },
                )
            )
        return dg.SensorResult(run_requests=requests, cursor=advanced.dumps())

    return copper_incremental_sensor


def build_copper_fetch_all_schedule(
    settings: Settings,
    job: UnresolvedAssetJobDefinition,
    partitions_def: dg.TimeWindowPartitionsDefinition,
) -> dg.ScheduleDefinition:
    @dg.schedule(
        name="copper_fetch_all_schedule",
        cron_schedule=settings.copper.fetch_all_cron,
        job=job,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="'Fetch all': every Copper partition refetched in one run.",
    )
    def copper_fetch_all_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        keys = partitions_def.get_partition_keys(current_time=context.scheduled_execution_time)
        return dg.RunRequest(
            run_key=f"copper-fetch-all:{context.scheduled_execution_time.isoformat()}",
            tags={**range_tags(keys[0], keys[-1]), "hull_planhat/trigger": "fetch all"},
        )

    return copper_fetch_all_schedule


# -- Planhat snapshots -------------------------------------------------------------------------


def planhat_fetch_job(partitions_def: dg.PartitionsDefinition) -> UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        "planhat_fetch",
        selection=dg.AssetSelection.groups(PLANHAT_GROUP)
        & dg.AssetSelection.assets(
            ["planhat", "companies"], ["planhat", "endusers"], ["planhat", "users"]
        ),
        partitions_def=partitions_def,
        description="Full snapshot of Planhat companies, endusers and team members.",
    )


def build_planhat_fetch_schedule(
    settings: Settings, job: UnresolvedAssetJobDefinition
) -> dg.ScheduleDefinition:
    @dg.schedule(
        name="planhat_fetch_schedule",
        cron_schedule=interval_cron(settings.planhat.fetch_interval_minutes),
        job=job,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Every planhat.fetch_interval_minutes: today's Planhat snapshot.",
    )
    def planhat_fetch_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        moment = context.scheduled_execution_time.astimezone(dt.UTC)
        return dg.RunRequest(
            run_key=f"planhat-fetch:{moment.isoformat()}",
            partition_key=moment.date().isoformat(),
        )

    return planhat_fetch_schedule


def hull_sync_job() -> UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        "hull_sync",
        selection=dg.AssetSelection.groups("hull"),
        description="Apply the raw rows fetched since the last run to the Hull profile store.",
    )


def planhat_delivery_job() -> UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        "planhat_delivery",
        selection=dg.AssetSelection.groups("outgoing") - DESTINATIONS,
        description="Diffed payloads and their bulk delivery to Planhat.",
    )


DESTINATIONS = dg.AssetSelection.groups("outgoing") & dg.AssetSelection.tag(
    "planhat/kind", "destination"
)


def planhat_destinations_job() -> UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        "planhat_destinations",
        selection=DESTINATIONS,
        description="Configured destinations: any other Planhat endpoint.",
    )


# -- what runs after what ----------------------------------------------------------------------
CHAIN = [
    ("hull_after_sources", ("copper_sync", "planhat_fetch"), "hull_sync"),
    ("planhat_after_hull", ("hull_sync",), "planhat_delivery"),
    ("destinations_after_delivery", ("planhat_delivery",), "planhat_destinations"),
]
"""Explicit chaining, not declarative automation: a successful run of the jobs on the left
requests the job on the right. Each step reads what changed since it last ran, so one run
catches up with any number of upstream runs; a run already queued or running is enough."""

ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


DRY_RUN_TAG = "hull_planhat/dry_run"


def is_dry_run(run: Any) -> bool:
    """A run tagged as a dry run, or configured with ``dry_run: true`` on any step."""
    if (run.tags or {}).get(DRY_RUN_TAG) == "true":
        return True
    ops = (run.run_config or {}).get("ops") or {}
    return any(
        isinstance(op, dict) and (op.get("config") or {}).get("dry_run") is True
        for op in ops.values()
    )


def build_chain_sensors(
    jobs: dict[str, UnresolvedAssetJobDefinition],
) -> list[dg.RunStatusSensorDefinition]:
    def build(name: str, after: tuple[str, ...], then: str) -> dg.RunStatusSensorDefinition:
        @dg.run_status_sensor(
            name=name,
            run_status=dg.DagsterRunStatus.SUCCESS,
            monitored_jobs=[jobs[a] for a in after],
            request_job=jobs[then],
            default_status=dg.DefaultSensorStatus.RUNNING,
            description=f"After a successful {' or '.join(after)} run: {then}.",
        )
        def _chain(context: dg.RunStatusSensorContext):
            if is_dry_run(context.dagster_run):
                return dg.SkipReason("a dry run triggers nothing")
            active = context.instance.get_runs(
                filters=dg.RunsFilter(job_name=then, statuses=ACTIVE), limit=1
            )
            if active:
                return dg.SkipReason(f"{then} is already queued or running")
            return dg.RunRequest(run_key=f"{then}:after:{context.dagster_run.run_id}")

        return _chain

    return [build(name, after, then) for name, after, then in CHAIN]
