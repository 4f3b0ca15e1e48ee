"""The one Definitions object: every asset, check, job, schedule, sensor and resource."""

import warnings
from collections.abc import Iterable

import dagster as dg

from hull_planhat_pipelines.assets.copper import build_copper_assets
from hull_planhat_pipelines.assets.destinations import build_destination_assets
from hull_planhat_pipelines.assets.hull import build_hull_assets
from hull_planhat_pipelines.assets.outgoing import build_delivery_asset, build_payload_assets
from hull_planhat_pipelines.assets.planhat import build_planhat_assets
from hull_planhat_pipelines.checks import (
    build_copper_checks,
    build_hull_checks,
    delivery_checks,
    planhat_checks,
)
from hull_planhat_pipelines.orchestration import (
    build_copper_fetch_all_schedule,
    build_copper_incremental_sensor,
    build_failure_webhook_sensor,
    build_follow_sensor,
    build_planhat_fetch_sensor,
    copper_partitions,
    copper_sync_job,
    downstream_job,
    dry_run_job,
    forced_send_job,
    hull_sync_job,
    planhat_delivery_job,
    planhat_destinations_job,
    planhat_fetch_job,
)
from hull_planhat_pipelines.readability import readable
from hull_planhat_pipelines.resources import (
    WarehouseResource,
    copper_resource,
    hull_firehose_resource,
    planhat_resource,
)
from hull_planhat_pipelines.settings import Settings, load_settings
from hull_planhat_pipelines.sync.copper.schema import CopperObject
from hull_planhat_pipelines.warehouse import warehouse_path

# Beta markers on Dagster parameters we rely on (backfill_policy) are for this project's
# developers: `dagster dev`, the daemon and every run would repeat them to its users.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)


def build_definitions(
    settings: Settings | None = None,
    *,
    progress_bar: bool = False,
    copper_objects: Iterable[CopperObject] | None = None,
) -> dg.Definitions:
    """Everything, built from one configuration (``HULL_PLANHAT_CONFIG`` by default).

    ``copper_objects``: the Copper declarations that get an asset and its checks (default: the
    packaged ``COPPER_OBJECTS``); an object declared elsewhere joins the ``copper_sync`` job,
    whose selection is the Copper group.
    """
    settings = settings or load_settings()
    objects = None if copper_objects is None else list(copper_objects)
    copper_days = copper_partitions(settings)  # reaches copper.activity_horizon_days ahead
    copper_job = copper_sync_job(copper_days)
    planhat_job = planhat_fetch_job()
    jobs = {
        "copper_sync": copper_job,
        "planhat_fetch": planhat_job,
        "hull_sync": hull_sync_job(),
        "planhat_delivery": planhat_delivery_job(),
        "planhat_destinations": planhat_destinations_job(),
        "profiles_and_delivery": downstream_job(),
    }
    database = warehouse_path()
    assets = [
        *build_copper_assets(settings, copper_days, objects),
        *build_planhat_assets(settings),
        *build_hull_assets(settings),
        *build_payload_assets(settings),
        build_delivery_asset(settings),
        *build_destination_assets(settings),
    ]
    jobs["planhat_forced_send"] = forced_send_job(assets)
    jobs["planhat_dry_run"] = dry_run_job(assets)
    return dg.Definitions(
        assets=readable(assets),
        asset_checks=[
            *build_copper_checks(settings, objects),
            *planhat_checks(),
            build_hull_checks(settings),
            *delivery_checks(settings),
        ],
        jobs=list(jobs.values()),
        # Steps of a run share one process: DuckDB takes one writing process per file.
        executor=dg.in_process_executor,
        sensors=[
            build_copper_incremental_sensor(settings, copper_job),
            build_planhat_fetch_sensor(settings, planhat_job),
            build_failure_webhook_sensor(),
            build_follow_sensor(assets, jobs["profiles_and_delivery"], planhat_job),
        ],
        schedules=[
            build_copper_fetch_all_schedule(settings, copper_job, copper_days),
        ],
        resources={
            "copper": copper_resource(settings.copper.requests_per_minute, progress_bar),
            "planhat": planhat_resource(settings.planhat.requests_per_minute),
            "warehouse": WarehouseResource(database=database),
            "hull_firehose": hull_firehose_resource(),
        },
    )


defs = build_definitions()
