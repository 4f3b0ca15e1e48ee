"""Partitions, jobs, schedules and sensors: when things run, never what they do."""

import contextlib
import datetime as dt
import functools
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import dagster as dg
import duckdb
import pandas as pd

from hull_planhat_pipelines.clients.copper import COPPER_OBJECTS, CopperClient
from hull_planhat_pipelines.clients.http import ApiAuthError, ApiError
from hull_planhat_pipelines.clients.planhat_targets import PLANHAT_TARGETS
from hull_planhat_pipelines.clients.webhook import WEBHOOK_ENV_VAR, WebhookError, post_alert
from hull_planhat_pipelines.policies import UNCHANGED
from hull_planhat_pipelines.resources import CopperResource, copper_resource
from hull_planhat_pipelines.settings import Settings
from hull_planhat_pipelines.sync.canonical import canonical_json
from hull_planhat_pipelines.sync.copper.polling import (
    COPPER_SINCE_TAG,
    COPPER_UNTIL_TAG,
    CopperCursor,
    PlannedRun,
    merge_runs,
    plan_incremental_runs,
)
from hull_planhat_pipelines.sync.log import SyncEvent, events_frame
from hull_planhat_pipelines.sync.planhat.snapshot_due import READ_BACK_STATUSES
from hull_planhat_pipelines.warehouse import append_sync_log, read_only, table_exists

log = logging.getLogger(__name__)

ASSET_PARTITION_RANGE_START_TAG = "dagster/asset_partition_range_start"
ASSET_PARTITION_RANGE_END_TAG = "dagster/asset_partition_range_end"
"""The run tags of a single-run backfill over a partition range (Dagster's own tag names)."""


class AssetJob(Protocol):
    """What ``dg.define_asset_job`` returns: a job resolved when the Definitions load (its
    class is not a public Dagster name; sensors and schedules take it as ``job``)."""

    @property
    def name(self) -> str: ...


COPPER_GROUP = "copper"
PLANHAT_GROUP = "planhat"
SORTABLE_OBJECTS = [name for name, obj in COPPER_OBJECTS.items() if obj.sort_by]
"""Objects the sensor can ask "what is your newest change?" (activities have no sort)."""


def copper_years_ahead(horizon_days: int) -> int:
    """Years after the current one that ``horizon_days`` after some day can reach."""
    return (dt.date(2024, 12, 31) + dt.timedelta(days=horizon_days)).year - 2024


def copper_partitions(settings: Settings) -> dg.TimeWindowPartitionsDefinition:
    """Copper's UTC years (keys ``2024``, ``2025``, ...): from the year of
    ``copper.start_date`` up to the year that holds ``copper.activity_horizon_days`` after
    today.

    Years, not days (nor months): every partition of a run costs Dagster a "planned" event
    when the run is created and a materialization event when it ends, each a write to the
    instance's event log (about 0.1 s on SQLite under load), so a backfill or "fetch all"
    over 1,064 days paid minutes of bookkeeping and 47 months still paid about 35 s. A year
    per partition keeps it to a handful whatever the account's age (one more a year), and the
    backfill dialog short. Per-day idempotency is kept per record instead: the 5-minute poll
    fetches only what changed since its cursor and upserts it by id into the current year
    (see ``copper_window_tags``); a range run replaces its years whole. Activities are
    windowed by their date and a meeting planned for next January is dated next year: its
    year must exist to hold it (the fetch itself stops at the horizon's day). The other
    objects are windowed by ``date_modified``, never in the future, so their years ahead stay
    empty."""
    start = dt.datetime(settings.copper.start_date.year, 1, 1, tzinfo=dt.UTC)
    return dg.TimeWindowPartitionsDefinition(
        cron_schedule="0 0 1 1 *",
        start=start,
        fmt=COPPER_KEY_FORMAT,
        timezone="UTC",
        end_offset=1 + copper_years_ahead(settings.copper.activity_horizon_days),
    )


COPPER_KEY_FORMAT = "%Y"


def _utc_day(ts: int) -> dt.date:
    return dt.datetime.fromtimestamp(ts, dt.UTC).date()


def copper_keys(names: Sequence[str] | None = None) -> list[dg.AssetKey]:
    return [dg.AssetKey(["copper", n]) for n in (names or list(COPPER_OBJECTS))]


def range_tags(first: str, last: str) -> dict[str, str]:
    """Tags that make one run cover a partition range (what a single-run backfill does)."""
    return {ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last}


def copper_partition_key(day: dt.date) -> str:
    """The key of the Copper partition (a UTC year) that holds ``day``."""
    return day.strftime(COPPER_KEY_FORMAT)


def copper_window_tags(
    first: dt.date, last: dt.date, since: int | Mapping[str, int] | None, until: int | None
) -> dict[str, str]:
    """Tags of a Copper run over the years of ``first``..``last``: replace them whole when
    ``since`` is ``None``, else upsert the records dated in [``since``, ``until``] (``since``
    per object when a mapping)."""
    tags = range_tags(copper_partition_key(first), copper_partition_key(last))
    if since is not None:
        tags[COPPER_SINCE_TAG] = (
            str(since) if isinstance(since, int) else json.dumps(dict(since), sort_keys=True)
        )
        if until is not None:
            tags[COPPER_UNTIL_TAG] = str(until)
    return tags


def copper_range_tags(first: dt.date, last: dt.date) -> dict[str, str]:
    """Tags of one run that replaces the Copper years holding ``first``..``last``."""
    return copper_window_tags(first, last, None, None)


def day_start(day: dt.date) -> int:
    return int(dt.datetime.combine(day, dt.time(), dt.UTC).timestamp())


def day_end(day: dt.date) -> int:
    """The last second of ``day`` (UTC)."""
    return day_start(day + dt.timedelta(days=1)) - 1


def copper_fetch_tags(settings: Settings, today: dt.date, *, full: bool) -> dict[str, str]:
    """The run tags of a catch-up fetch (the command line's, and a first start's).

    A full fetch (or a first start) replaces every year since ``copper.start_date``; a
    catch-up upserts, per object, only the records from its resume point (``catch_up_since``)
    up to the activity horizon, so it costs what changed, not whole years nor whole days."""
    last = today + dt.timedelta(days=settings.copper.activity_horizon_days)
    start = settings.copper.start_date
    since = None if full else catch_up_since(settings, today)
    if since is None:
        return copper_window_tags(start, last, None, None)
    first = max(start, min(_utc_day(second) for second in since.values()))
    return copper_window_tags(first, last, since, day_end(last))


def catch_up_since(settings: Settings, today: dt.date) -> dict[str, int] | None:
    """Per Copper object, the first second a catch-up fetches (inclusive); ``None`` while a
    table is missing or empty (a first start fetches everything).

    An object sorted by modification date resumes at the newest ``date_modified`` it stores,
    that second included: Copper's dates are whole seconds and its filters inclusive, so a
    record saved in that second after the previous fetch is not missed, and a record edited
    since carries a newer date (the rule the incremental poll's cursor follows). Activities
    have no such sort: the trailing re-scan window before their newest day (back-dated ones)."""
    found: dict[str, int] = {}
    with read_only() as conn:
        if conn is None:
            return None
        for name, obj in COPPER_OBJECTS.items():
            if not table_exists(conn, "copper", name):
                return None
            if obj.sort_by is not None:
                row = conn.execute(
                    f"select epoch(max({obj.sort_by}))::bigint from copper.{name}"
                ).fetchone()
                if row is None or row[0] is None:
                    return None
                found[name] = int(row[0])
                continue
            row = conn.execute(f"select max(partition_date) from copper.{name}").fetchone()
            if row is None or row[0] is None:
                return None
            day = row[0].date() if isinstance(row[0], dt.datetime) else row[0]
            rescan = min(day, today) - dt.timedelta(days=settings.copper.activity_rescan_days)
            found[name] = day_start(max(rescan, settings.copper.start_date))
    return found


def ask_copper(
    client: CopperClient, cursor: CopperCursor, now: int
) -> tuple[dict[str, int | None], bool]:
    """A poll's questions, one record each: every sortable object's newest change, and whether
    an activity is dated since the last check (yes before the first check)."""
    newest = {name: client.newest_modified(name) for name in SORTABLE_OBJECTS}
    since = cursor.activities_checked
    return newest, since is None or client.activity_exists_since(since, until=now)


def plan_poll(
    settings: Settings,
    cursor: CopperCursor,
    newest: dict[str, int | None],
    activities_changed: bool,
    now: int,
) -> tuple[list[PlannedRun], CopperCursor]:
    """``plan_incremental_runs`` with the configured windows (the sensor's and the command
    line's)."""
    return plan_incremental_runs(
        cursor,
        newest,
        activities_changed,
        now,
        start_date=settings.copper.start_date,
        rescan_days=settings.copper.activity_rescan_days,
        rescan_minutes=settings.copper.activity_rescan_minutes,
        horizon_days=settings.copper.activity_horizon_days,
    )


COMMAND_LINE_POLL = "command_line"
"""The name the command line's Copper cursor is kept under in the warehouse."""


@dataclass(frozen=True)
class CommandLinePoll:
    """What a command-line sync asks of Copper, planned from its cursor: ``run`` is ``None``
    when nothing changed (no run starts); ``cursor`` is saved once the whole sync went
    through; ``asked``: how many questions and what they found, for the summary."""

    run: PlannedRun | None
    cursor: CopperCursor
    asked: str


def plan_command_line_poll(
    settings: Settings, copper: CopperResource, cursor_text: str | None, now: int
) -> CommandLinePoll | None:
    """The sensor's plan (``plan_incremental_runs``) for a sync from the command line, as one
    run; ``None`` when it cannot be planned that way: no saved cursor, a Copper table missing
    or empty, or a question Copper did not answer (the caller then fetches from the
    warehouse's resume points, whose run reports the error as a fetch would)."""
    if not cursor_text or missing_credentials(COPPER_CREDENTIALS):
        return None
    if catch_up_since(settings, _utc_day(now)) is None:
        return None
    cursor = CopperCursor.parse(cursor_text)
    try:
        with (
            dg.build_resources({"copper": copper}) as resources,
            resources.copper.client() as client,
        ):
            newest, activities_changed = ask_copper(client, cursor, now)
            requests = client.stats.snapshot()["requests"]
    except ApiError as exc:
        log.warning("Copper poll not answered (%s): fetching from the stored resume points", exc)
        return None
    runs, advanced = plan_poll(settings, cursor, newest, activities_changed, now)
    reasons = ", ".join(run.reason for run in runs) or "nothing changed"
    return CommandLinePoll(
        merge_runs(runs, reasons), advanced, f"{requests} questions to Copper: {reasons}"
    )


def cursor_after_catch_up(settings: Settings, started: int) -> CopperCursor | None:
    """The cursor a successful fetch from the warehouse's resume points (or a full one) leaves:
    each sortable object's newest stored change, and activities checked and re-scanned when the
    run started (its window reached back over the trailing re-scan days). ``None`` while a
    table is missing or empty.

    A change stored from the run's start on may have been read within its second, before a
    later save in that same second: such an object's cursor stands just before the start, so
    the next sync fetches what changed since then."""
    since = catch_up_since(settings, _utc_day(started))
    if since is None:
        return None
    newest = {name: min(since[name], started - 1) for name in SORTABLE_OBJECTS}
    return CopperCursor(newest=newest, activities_checked=started, activities_rescanned=started)


def copper_tables_empty() -> bool:
    """True while no Copper table holds a row yet (a first start)."""
    with read_only() as conn:
        if conn is None:
            return True
        for name in COPPER_OBJECTS:
            if table_exists(conn, "copper", name):
                row = conn.execute(f"select count(*) from copper.{name}").fetchone()
                if row and row[0]:
                    return False
    return True


def copper_sync_job(partitions_def: dg.PartitionsDefinition) -> AssetJob:
    return dg.define_asset_job(
        "copper_sync",
        selection=dg.AssetSelection.groups(COPPER_GROUP),
        partitions_def=partitions_def,
        description=(
            "Fetch Copper objects into their yearly partitions: a range replaces its years "
            "in one write; a run tagged with a since/until window upserts only those records."
        ),
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


COPPER_CREDENTIALS = ("COPPER_API_KEY", "COPPER_USER_EMAIL")
FIRST_START = "first start"
FIRST_START_KEY = "copper-first-start"


def missing_credentials(names: Sequence[str]) -> list[str]:
    """The variables of ``names`` that are unset or empty (names only: never their values)."""
    return [name for name in names if not os.environ.get(name)]


@dataclass(frozen=True)
class FirstStart:
    """What a tick over empty Copper tables does: ask for a full fetch (``run_key``), or wait
    for the fetch already under way (``waiting``), or nothing (a first start succeeded)."""

    run_key: str | None = None
    waiting: str = ""


def plan_first_start(instance: dg.DagsterInstance) -> FirstStart:
    """The full fetch a first start asks for, until one succeeds.

    Its run key counts the first-start runs that failed: ticks before the run is created ask
    for the same key (one run), a failure makes the next tick ask again under a new key. While
    any Copper run is queued or running (a first start, a "fetch all", a graph launch), the
    tick waits for it rather than asking for a second full fetch."""
    runs = instance.get_runs(filters=dg.RunsFilter(tags={TRIGGER_TAG: FIRST_START}))
    if any(run.status == dg.DagsterRunStatus.SUCCESS for run in runs):
        return FirstStart()  # fetched once: an empty Copper account stays empty
    copper = set(copper_keys())
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=ACTIVE)):
        if run.job_name == "copper_sync" or copper & set(run.asset_selection or ()):
            return FirstStart(waiting=f"Copper run {run.run_id[:8]} ({run.status.value})")
    failed = sum(run.status == dg.DagsterRunStatus.FAILURE for run in runs)
    canceled = sum(run.status == dg.DagsterRunStatus.CANCELED for run in runs)
    return FirstStart(run_key=f"{FIRST_START_KEY}:{failed + canceled}")


def build_copper_incremental_sensor(
    settings: Settings,
    job: AssetJob,
    clock: Callable[[], float] = time.time,
    sleeper: Callable[[float], None] = time.sleep,
    copper: CopperResource | None = None,
) -> dg.SensorDefinition:
    """The 5-minute poll (and a first start's full fetch).

    The Copper resource is not a parameter of the sensor function: Dagster would build it
    before every tick, and with the credentials unset that fails as a configuration error at
    each tick. The tick checks the variables first and skips naming those unset; then it uses
    the resource given to its context (a caller's) or builds ``copper`` (by default the
    definitions' own, from the environment)."""
    fallback = copper or copper_resource(settings.copper.requests_per_minute)

    @dg.sensor(
        name="copper_incremental_sensor",
        job=job,
        minimum_interval_seconds=settings.copper.poll_minutes * 60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Asks Copper one cheap question per object (its newest change, page size 1) and "
            "requests a run that fetches only the records changed since then and upserts them "
            "by id (a since/until window on the year's partition)."
        ),
    )
    def copper_incremental_sensor(
        context: dg.SensorEvaluationContext,
    ) -> dg.SensorResult | dg.SkipReason:
        missing = missing_credentials(COPPER_CREDENTIALS)
        if missing:  # a resource built now would fail the tick as a configuration error
            return dg.SkipReason(
                f"{', '.join(missing)} not set: export Copper's credentials (README, Running "
                "against real Copper and Planhat) or start the UI with `hull-planhat dev`."
            )
        with contextlib.ExitStack() as stack:
            given = getattr(context.resources, "copper", None)
            if given is None:
                given = stack.enter_context(dg.build_resources({"copper": fallback})).copper
            return _poll(context, given)

    def _poll(
        context: dg.SensorEvaluationContext, copper: CopperResource
    ) -> dg.SensorResult | dg.SkipReason:
        cursor = CopperCursor.parse(context.cursor)
        now = int(clock())
        try:
            with copper.client() as client:
                newest, activities_changed = ask_copper(client, cursor, now)
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
        runs, advanced = plan_poll(settings, cursor, newest, activities_changed, now)
        fingerprint = canonical_json(newest)
        first_start = FirstStart()
        if copper_tables_empty():
            # A first start (or one whose full fetch failed): everything, not only the day of
            # the newest change, asked for again until a full fetch succeeds.
            first_start = plan_first_start(context.instance)
            if first_start.waiting:
                return dg.SkipReason(
                    f"First start: the Copper tables are empty and {first_start.waiting} is "
                    "under way; the next tick asks again if it did not fill them."
                )
        if first_start.run_key:
            last = _utc_day(now) + dt.timedelta(days=settings.copper.activity_horizon_days)
            first = settings.copper.start_date
            context.log.info(f"first start: every Copper object, {first}..{last}")
            runs = [PlannedRun(tuple(COPPER_OBJECTS), first, last, FIRST_START)]
        requests = []
        for run in runs:
            if run.reason == FIRST_START and first_start.run_key:
                key = first_start.run_key
            else:
                key = run.run_key(fingerprint if run.reason == "modified records" else str(now))
            context.log.info(
                f"{run.reason}: {', '.join(run.objects)} {run.first_day}..{run.last_day}"
                + (" (changed records only)" if run.since is not None else "")
            )
            window = copper_window_tags(run.first_day, run.last_day, run.since, run.until)
            requests.append(
                dg.RunRequest(
                    run_key=key,
                    asset_selection=copper_keys(run.objects),
                    tags={**window, "hull_planhat/trigger": run.reason},
                )
            )
        return dg.SensorResult(run_requests=requests, cursor=advanced.dumps())

    return copper_incremental_sensor


def build_copper_fetch_all_schedule(
    settings: Settings,
    job: AssetJob,
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


def planhat_fetch_job() -> AssetJob:
    return dg.define_asset_job(
        "planhat_fetch",
        selection=dg.AssetSelection.assets(*SNAPSHOT_KEYS),
        description="Full snapshot of Planhat companies, endusers and team members.",
    )


PLANHAT_CREDENTIALS = ("PLANHAT_API_TOKEN", "PLANHAT_TENANT_TOKEN")


def build_planhat_fetch_sensor(
    settings: Settings,
    job: AssetJob,
    clock: Callable[[], float] = time.time,
) -> dg.SensorDefinition:
    """A Planhat snapshot every ``planhat.fetch_interval_minutes`` (5 to 1,440, any
    value: a sensor's interval, where a cron schedule could keep only divisors of an hour or
    a day). One run per interval window, whatever the tick timing."""
    minutes = settings.planhat.fetch_interval_minutes

    @dg.sensor(
        name="planhat_fetch_sensor",
        job=job,
        minimum_interval_seconds=minutes * 60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Every {minutes} minutes (planhat.fetch_interval_minutes): a full "
        "Planhat snapshot.",
    )
    def planhat_fetch_sensor(context: dg.SensorEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        missing = [name for name in PLANHAT_CREDENTIALS if not os.environ.get(name)]
        if missing:  # a run would fail at once: say what to set instead
            return dg.SkipReason(
                f"{', '.join(missing)} not set: export Planhat's credentials (README, Running "
                "against real Copper and Planhat) or start the UI with `hull-planhat dev`."
            )
        now = int(clock())
        window = now // (minutes * 60)
        return dg.RunRequest(
            run_key=f"planhat-fetch:{minutes}:{window}",
            tags={TRIGGER_TAG: f"every {minutes} minutes"},
        )

    return planhat_fetch_sensor


def hull_sync_job() -> AssetJob:
    return dg.define_asset_job(
        "hull_sync",
        selection=dg.AssetSelection.groups("hull"),
        description="Apply the raw rows fetched since the last run to the Hull profile store.",
    )


def planhat_delivery_job() -> AssetJob:
    return dg.define_asset_job(
        "planhat_delivery",
        selection=dg.AssetSelection.groups("outgoing") - DESTINATIONS,
        description="Diffed payloads and their bulk delivery to Planhat.",
    )


DESTINATIONS = dg.AssetSelection.groups("outgoing") & dg.AssetSelection.tag(
    "planhat/kind", "destination"
)


def planhat_destinations_job() -> AssetJob:
    return dg.define_asset_job(
        "planhat_destinations",
        selection=DESTINATIONS,
        description="Configured destinations: any other Planhat endpoint.",
    )


# -- what runs after what: by assets, whoever materialized them -------------------------------
SNAPSHOT_KEYS = [
    dg.AssetKey(["planhat", m]) for m in ("company_snapshots", "enduser_snapshots", "team_members")
]
DELIVERIES_KEY = dg.AssetKey(["planhat", "deliveries"])
SOURCES = dg.AssetSelection.groups(COPPER_GROUP) | dg.AssetSelection.assets(*SNAPSHOT_KEYS)
"""What the poll and the schedules fetch; everything else follows them by the asset graph."""

TRIGGER_TAG = "hull_planhat/trigger"
AFTER_DELIVERY = "delivered to Planhat"

ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


DRY_RUN_TAG = "hull_planhat/dry_run"
FROM_UI_TAG = "dagster/from_ui"
"""Set by the Dagster UI on the runs it launches."""


def _configured(run: Any, field: str) -> bool:
    """Whether any step of ``run`` is configured with ``field: true``."""
    ops = (run.run_config or {}).get("ops") or {}
    return any(
        isinstance(op, dict) and (op.get("config") or {}).get(field) is True for op in ops.values()
    )


def is_dry_run(run: Any) -> bool:
    """A run tagged as a dry run, or configured with ``dry_run: true`` on any step."""
    return (run.tags or {}).get(DRY_RUN_TAG) == "true" or _configured(run, "dry_run")


RUN_STARTS_READ = 1000
"""The most run starts one plan reads (a sensor far behind reads the newest; an older start
is then not known, and its followers are asked for again: the safe side)."""


def _runs_started_since(instance: dg.DagsterInstance, storage_id: int) -> dict[str, int]:
    """The runs started after the event log's ``storage_id``, with their start's storage id."""
    found = instance.fetch_run_status_changes(
        dg.RunStatusChangeRecordsFilter(
            event_type=dg.DagsterEventType.RUN_START, after_storage_id=storage_id
        ),
        limit=RUN_STARTS_READ,
    )
    return {r.run_id: r.storage_id for r in found.records}


def _brings_up(instance: dg.DagsterInstance, run_id: str) -> bool:
    """A run that did its work for real: a dry run or a test send brings nothing up to date."""
    run = instance.get_run_by_id(run_id)
    return run is not None and not is_dry_run(run) and not _configured(run, "test_mode")


class AssetGraph:
    """Who follows whom, from the asset definitions themselves (no job names, no order list)."""

    def __init__(self, assets: Sequence[dg.AssetsDefinition]) -> None:
        self.assets = list(assets)
        self.downstream: dict[dg.AssetKey, set[dg.AssetKey]] = {}
        self.upstream: dict[dg.AssetKey, set[dg.AssetKey]] = {}
        self.together: dict[dg.AssetKey, set[dg.AssetKey]] = {}
        for asset in self.assets:
            keys = set(asset.keys)
            for key in keys:
                self.together[key] = keys if not asset.can_subset else {key}
                for dep in asset.asset_deps.get(key, ()):
                    self.downstream.setdefault(dep, set()).add(key)
                    self.upstream.setdefault(key, set()).add(dep)

    @property
    def keys(self) -> list[dg.AssetKey]:
        return sorted(self.together, key=lambda k: k.to_user_string())

    def _closure(self, start: set[dg.AssetKey], edges: dict) -> set[dg.AssetKey]:
        seen, todo = set(), list(start)
        while todo:
            for nxt in edges.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    def followers(self, key: dg.AssetKey) -> set[dg.AssetKey]:
        """Every asset downstream of ``key`` (not ``key`` itself)."""
        return self._closure({key}, self.downstream)

    def ancestors(self, keys: set[dg.AssetKey]) -> set[dg.AssetKey]:
        return self._closure(set(keys), self.upstream)

    def whole(self, keys: set[dg.AssetKey]) -> set[dg.AssetKey]:
        """``keys`` with the other outputs of multi-assets that cannot run in part."""
        return {k for key in keys for k in self.together.get(key, {key})}


@dataclass(frozen=True)
class FollowPlan:
    """What new materializations ask for: one downstream run and/or a Planhat snapshot."""

    assets: frozenset[dg.AssetKey]
    snapshot: bool
    cursor: dict[str, int]
    waiting: str = ""
    after_delivery: bool = False
    """Only what follows a snapshot of a delivery: its run carries the tag, so its own
    materializations do not ask for another delivery."""

    @property
    def tags(self) -> dict[str, str]:
        return {TRIGGER_TAG: AFTER_DELIVERY if self.after_delivery else "upstream materialized"}

    @property
    def empty(self) -> bool:
        return not self.assets and not self.snapshot


SNAPSHOT_TARGETS = frozenset(t.name for t in PLANHAT_TARGETS if t.settled_by_snapshot)
"""Targets whose records a Planhat snapshot lists (analytics events and metrics are not)."""


def _metadata_value(metadata: Mapping[str, Any], name: str) -> Any:
    """A materialization's metadata entry as a plain value (entries are ``MetadataValue``s;
    tests and older events may hold the plain value)."""
    entry = metadata.get(name)
    return getattr(entry, "value", entry)


def needs_read_back(metadata: dict[str, Any]) -> bool:
    """A delivery that left companies or endusers for a Planhat snapshot to read back (not a
    dry run): created, or with an outcome in doubt (``READ_BACK_STATUSES``), or matched to a
    record the newest snapshot does not list (``not_in_snapshot``)."""
    value = functools.partial(_metadata_value, metadata)
    if value("dry_run"):
        return False
    unseen = value("not_in_snapshot")
    if isinstance(unseen, dict) and any(int(n or 0) > 0 for n in unseen.values()):
        return True
    by_target = value("by_target")
    if isinstance(by_target, dict):
        return any(
            int(count or 0) > 0
            for target, counts in by_target.items()
            if target in SNAPSHOT_TARGETS and isinstance(counts, dict)
            for status, count in counts.items()
            if status in READ_BACK_STATUSES
        )
    return int(value("created") or 0) > 0


def _found_unchanged(record: Any) -> bool:
    """A source run that found its source exactly as stored (``policies.UNCHANGED``)."""
    materialization = record.asset_materialization
    if materialization is None:
        return False
    return bool(_metadata_value(materialization.metadata, UNCHANGED))


def _left_open(metadata: Mapping[str, Any]) -> bool:
    """A delivery or destination run whose ``failed`` records (a failed call, an unanswered
    create) the next run takes up again."""
    return int(_metadata_value(metadata, "failed") or 0) > 0


def unsettled(entry: Any) -> bool:
    """An asset the last attempt left undone: never materialized, planned by a run that did not
    materialize it (failed, killed), or materialized with records left to retry."""
    latest = entry.last_materialization_record
    if latest is None:
        return True
    planned = entry.last_planned_materialization_storage_id
    if planned is not None and planned > latest.storage_id:
        return True
    materialization = latest.asset_materialization
    return materialization is not None and _left_open(dict(materialization.metadata))


def plan_followers(
    instance: dg.DagsterInstance,
    graph: AssetGraph,
    cursor: dict[str, int],
    job_assets: Callable[[str], set[dg.AssetKey]],
    *,
    wait_for_active: bool = True,
    follow_dry_runs: bool = False,
    snapshot_stored: bool = False,
) -> FollowPlan:
    """What the materializations newer than ``cursor`` (storage ids per asset) ask for.

    Each new materialization asks for every asset downstream of it that its own run did not
    also cover, whichever job, backfill or graph launch (``__ASSET_JOB``) produced it, and that
    no run started after it has brought up to date since (a backfill runs its sources, then
    what follows them, in runs of their own: those are not run a second time). Any number
    of new events become one request. While a run is in progress on those assets or on their
    sources, nothing is requested and the cursor stays: the events are seen again next time, so
    an update that lands while the downstream run is running is never dropped. A source run
    that found its source as stored (``source_unchanged``) asks for nothing, unless something
    downstream of it is ``unsettled`` (a run failed or was killed before producing it, or a
    delivery left records to retry): then it asks as any other, so an interrupted cycle is
    finished by the next one. A run a person launched in the UI (``dagster/from_ui``) always
    carries its chain: they asked for it. ``snapshot_stored``: the warehouse holds a Planhat
    snapshot this instance did not record (the command line's ephemeral instance, when no
    snapshot was due), so the chain need not stop at Hull waiting for one.
    """

    def assets_of(run: dg.DagsterRun | None) -> set[dg.AssetKey]:
        if run is None:
            return set()
        if run.asset_selection is not None:
            return set(run.asset_selection)
        return job_assets(run.job_name)

    fresh: dict[dg.AssetKey, Any] = {}
    latest_of: dict[dg.AssetKey, Any] = {}
    open_keys: set[dg.AssetKey] = set(graph.keys)  # never materialized, until a record says
    for record in instance.get_asset_records(graph.keys):
        if not unsettled(record.asset_entry):
            open_keys.discard(record.asset_entry.asset_key)
        latest = record.asset_entry.last_materialization_record
        if latest is not None:
            latest_of[record.asset_entry.asset_key] = latest
        name = record.asset_entry.asset_key.to_user_string()
        if latest is not None and latest.storage_id > cursor.get(name, 0):
            fresh[record.asset_entry.asset_key] = latest
    first = min((r.storage_id for r in fresh.values()), default=None)
    started = _runs_started_since(instance, first) if first is not None else {}
    for_real = functools.cache(functools.partial(_brings_up, instance))

    def brought_up(followers_of: set[dg.AssetKey], since: Any) -> set[dg.AssetKey]:
        """The followers already materialized, and settled, by a run that started after the
        materialization ``since`` was recorded (the event log's order, not clocks): they read
        what it wrote (the later runs of one backfill, or of a chain launched by hand)."""
        return {
            key
            for key in followers_of - open_keys
            if key in latest_of
            and started.get(latest_of[key].run_id, 0) > since.storage_id
            and for_real(latest_of[key].run_id)
        }

    needed: set[dg.AssetKey] = set()
    snapshot = False
    after_delivery = graph.followers(DELIVERIES_KEY)
    delivery_branch = graph.ancestors({DELIVERIES_KEY}) - graph.ancestors(set(SNAPSHOT_KEYS))
    delivery_branch = {k for k in delivery_branch | {DELIVERIES_KEY} if k.path[0] == "planhat"}
    triggers: list[bool] = []  # per contributing event: from a run that followed a delivery?
    for key, latest in fresh.items():
        run = instance.get_run_by_id(latest.run_id)
        if run is not None and is_dry_run(run) and not follow_dry_runs:
            continue  # a dry run triggers nothing (the command line's own dry run goes on)
        asked_in_ui = run is not None and run.tags.get(FROM_UI_TAG) == "true"
        downstream = graph.followers(key)
        if _found_unchanged(latest) and not asked_in_ui and not (downstream & open_keys):
            continue  # the source is as it was and what follows it is settled: nothing to do
        ran = assets_of(run)
        followers = downstream - ran - {key} - brought_up(followers_of=downstream, since=latest)
        if DELIVERIES_KEY in ran and key != DELIVERIES_KEY:
            followers -= after_delivery  # the delivery's outcome decides when they follow
        if key == DELIVERIES_KEY:
            materialization = latest.asset_materialization
            read_back = materialization is not None and needs_read_back(
                dict(materialization.metadata)
            )
            # What Planhat created or left in doubt comes back first; the followers (the
            # destinations among them) follow the snapshot. A delivery that only updated
            # records is followed at once: Planhat holds what was sent.
            snapshot = snapshot or read_back
            if read_back:
                followers -= after_delivery
        quiet = run is not None and run.tags.get(TRIGGER_TAG) == AFTER_DELIVERY
        if quiet:
            # A snapshot of what was just delivered brings Planhat's side into Hull and the
            # destinations; the delivery itself waits for the next change.
            followers -= delivery_branch
        if followers:
            triggers.append(quiet)
        needed |= followers
    if DELIVERIES_KEY in needed:
        needed -= after_delivery  # they follow the delivery's outcome
    if not snapshot_stored and not set(SNAPSHOT_KEYS) <= set(latest_of):
        # Before the first Planhat snapshot the chain stops at Hull: owners are validated
        # against planhat/team_members and destinations read planhat_current; the snapshot's arrival
        # asks for the rest.
        needed -= delivery_branch | after_delivery
    needed = graph.whole(needed)
    advanced = dict(cursor)
    advanced.update({k.to_user_string(): r.storage_id for k, r in fresh.items()})
    if not needed and not snapshot:
        return FollowPlan(frozenset(), False, advanced)
    busy: set[dg.AssetKey] = set()
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=ACTIVE)) if wait_for_active else []:
        busy |= assets_of(run)
    watched = needed | graph.ancestors(needed) | (set(SNAPSHOT_KEYS) if snapshot else set())
    overlap = busy & watched
    if overlap:
        names = ", ".join(sorted(k.to_user_string() for k in overlap)[:5])
        return FollowPlan(frozenset(), False, cursor, waiting=f"in progress: {names}")
    return FollowPlan(frozenset(needed), snapshot, advanced, after_delivery=all(triggers))


def _run_key(plan: FollowPlan) -> str:
    return "follow:" + ",".join(f"{k}={v}" for k, v in sorted(plan.cursor.items()))


def build_follow_sensor(
    assets: Sequence[dg.AssetsDefinition],
    downstream_job: AssetJob,
    snapshot_job: AssetJob,
    interval_seconds: int = 30,
) -> dg.SensorDefinition:
    """One sensor that keeps everything downstream of a new materialization up to date."""
    graph = AssetGraph(assets)

    @dg.sensor(
        name="downstream_sensor",
        jobs=[downstream_job, snapshot_job],
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Watches every asset's materializations, whoever launched them (a job, the asset "
            "graph, a backfill, a schedule) and requests one run of everything downstream not "
            "yet brought up to date; after a delivery that created records in Planhat or left "
            "outcomes in doubt, a Planhat snapshot so Planhat's ids and fields come back. "
            "Waits while those assets are in progress."
        ),
    )
    def downstream_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        cursor = json.loads(context.cursor) if context.cursor else {}

        def job_assets(name: str) -> set[dg.AssetKey]:
            repository = context.repository_def
            if repository is None or not repository.has_job(name):
                return set()
            return set(repository.get_job(name).asset_layer.executable_asset_keys)

        plan = plan_followers(context.instance, graph, cursor, job_assets)
        if plan.waiting:
            return dg.SkipReason(f"Waiting: {plan.waiting}; asked again next tick.")
        requests = []
        if plan.assets:
            requests.append(
                dg.RunRequest(
                    run_key=_run_key(plan),
                    job_name=downstream_job.name,
                    asset_selection=sorted(plan.assets, key=lambda k: k.to_user_string()),
                    tags=plan.tags,
                )
            )
        if plan.snapshot:
            requests.append(
                dg.RunRequest(
                    run_key=_run_key(plan) + ":snapshot",
                    job_name=snapshot_job.name,
                    tags={TRIGGER_TAG: AFTER_DELIVERY},
                )
            )
        return dg.SensorResult(run_requests=requests, cursor=canonical_json(plan.cursor))

    return downstream_sensor


def _op_names(assets: Sequence[dg.AssetsDefinition], selection: dg.AssetSelection) -> dict:
    keys = selection.resolve(assets)
    return {a.node_def.name: a for a in assets if set(a.keys) & keys}


def forced_send_job(assets: Sequence[dg.AssetsDefinition]) -> AssetJob:
    """A preset: every in-segment record sent to Planhat, changed or not."""
    selection = dg.AssetSelection.groups("outgoing") - DESTINATIONS
    ops = {
        name: {"config": {"force": True}}
        for name in _op_names(assets, selection)
        if name.endswith("_payloads")
    }
    return dg.define_asset_job(
        "planhat_forced_send",
        selection=selection,
        config={"ops": ops},
        description=(
            "Forced batch send: payloads with `force: true` (every in-segment record, changed "
            "or not) and their delivery. Each payload step's `force` field can be switched "
            "off in the launchpad."
        ),
    )


def dry_run_job(assets: Sequence[dg.AssetsDefinition]) -> AssetJob:
    """A preset: everything after the sources computed and reported, nothing written."""
    selection = SOURCES.downstream(include_self=False)
    ops: dict[str, Any] = {}
    for name, asset in _op_names(assets, selection).items():
        fields = getattr(asset.op.config_schema, "config_type", None)
        names = set(getattr(fields, "fields", {}) or {})
        if "dry_run" in names:
            ops[name] = {"config": {"dry_run": True}}
    return dg.define_asset_job(
        "planhat_dry_run",
        selection=selection,
        config={"ops": ops},
        tags={DRY_RUN_TAG: "true"},
        description=(
            "Dry run: Hull applied, payloads computed, every delivery and destination with "
            "`dry_run: true` (requests built and shown as metadata samples, nothing sent, no "
            "fingerprint advanced, nothing forwarded to a Hull firehose). Triggers nothing."
        ),
    )


def downstream_job() -> AssetJob:
    return dg.define_asset_job(
        "profiles_and_delivery",
        selection=SOURCES.downstream(include_self=False),
        description=(
            "Everything that follows the sources: Hull profiles, payloads, delivery, "
            "destinations. Launched by downstream_sensor with the part that is out of date."
        ),
    )


# -- alerts ------------------------------------------------------------------------------------
def failure_text(run: dg.DagsterRun, error: str | None) -> str:
    """The alert's text: which job failed, what triggered it, the first line of the error."""
    trigger = run.tags.get(TRIGGER_TAG)
    first = error.strip().splitlines()[0][:300] if error and error.strip() else "failed"
    return (
        f":rotating_light: hull_planhat_pipelines: run `{run.run_id[:8]}` of `{run.job_name}` "
        f"failed{f' (trigger: {trigger})' if trigger else ''}: {first}"
    )


def build_failure_webhook_sensor(
    url: Callable[[], str | None] = lambda: os.environ.get(WEBHOOK_ENV_VAR) or None,
) -> dg.SensorDefinition:
    """Posts every failed run to ``HULL_PLANHAT_ALERT_WEBHOOK_URL`` (Slack-compatible JSON);
    does nothing while it is unset."""

    @dg.run_failure_sensor(
        name="run_failure_webhook",
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            f"Posts each failed run to the chat webhook in {WEBHOOK_ENV_VAR} (Slack-compatible "
            '`{"text": ...}`); off while that variable is unset.'
        ),
    )
    def run_failure_webhook(context: dg.RunFailureSensorContext) -> dg.SkipReason | None:
        target = url()
        if not target:
            return dg.SkipReason(f"{WEBHOOK_ENV_VAR} is not set: alerts are off")
        error = context.failure_event.message if context.failure_event else None
        try:
            post_alert(target, failure_text(context.dagster_run, error))
        except WebhookError as exc:
            context.log.warning(str(exc))
            return dg.SkipReason(str(exc))
        return None

    return run_failure_webhook
