"""Asset tests run what they check with ``dg.materialize``: the project's assets, checks and
resources, built from the configuration the environment names, on the warehouse it names (each
test's temporary one). Full cycles keep going through the jobs and ``run_sync``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import dagster as dg

from hull_planhat_pipelines.definitions import build_definitions
from hull_planhat_pipelines.orchestration import SNAPSHOT_KEYS
from hull_planhat_pipelines.settings import Settings, load_settings
from hull_planhat_pipelines.sync.copper.schema import CopperObject

DELIVERY = dg.AssetSelection.assets(["planhat", "deliveries"]).upstream(depth=1)
"""``planhat/deliveries`` and the payload assets it sends."""
DESTINATIONS = dg.AssetSelection.tag("planhat/kind", "destination")
"""Every configured destination asset."""
HULL = dg.AssetSelection.groups("hull")
"""The Hull profiles multi-asset: upserts, users, accounts and events in one step."""
PLANHAT_SNAPSHOTS = dg.AssetSelection.assets(*SNAPSHOT_KEYS)
"""Planhat's company, enduser and team member snapshots."""


def materialize(
    selection: dg.AssetSelection | str | list[dg.AssetKey],
    *,
    instance: dg.DagsterInstance,
    run_config: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    partition_key: str | None = None,
    settings: Settings | None = None,
    copper_objects: Iterable[CopperObject] | None = None,
) -> dg.ExecuteInProcessResult:
    """Materialize ``selection`` (with the checks of what it selects); failures are returned,
    not raised, so a test can read them. ``settings``: the environment's configuration by
    default; ``copper_objects``: the packaged declarations by default."""
    defs = build_definitions(settings or load_settings(), copper_objects=copper_objects)
    return dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=selection,
        resources=defs.resources,
        instance=instance,
        run_config=dict(run_config or {}),
        tags=tags,
        partition_key=partition_key,
        raise_on_error=False,
    )


def run_job(
    name: str, *, instance: dg.DagsterInstance, **options: Any
) -> dg.ExecuteInProcessResult:
    """Run the project's job ``name`` in process, as a full cycle does; failures returned."""
    job = build_definitions(load_settings()).resolve_job_def(name)
    return job.execute_in_process(instance=instance, raise_on_error=False, **options)


def asset_metadata(result: dg.ExecuteInProcessResult, key: str) -> dict[str, Any]:
    """The materialization metadata of ``key`` (``a/b``), values unwrapped."""
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        if materialization.asset_key == dg.AssetKey(key.split("/")):
            return {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}
    raise AssertionError(f"{key} was not materialized")


def failures(result: dg.ExecuteInProcessResult) -> list[str]:
    """The first line of each failed step's error."""
    return [
        e.step_failure_data.error.message.splitlines()[0]
        for e in result.all_events
        if e.is_step_failure and e.step_failure_data.error
    ]
