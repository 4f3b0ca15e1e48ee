"""The Hull profile store: ``hull/{user_upserts,account_upserts,events,users,accounts}``.

One multi-asset, because applying is one transaction: the upserts of a run, the profiles they
change, the events, the forwarding outbox and the per-source watermarks commit together or not
at all. It reads only the raw rows fetched since it last applied (a watermark on ``_fetched_at``
per source; for Planhat, the rows of a new snapshot that differ from the one last applied),
then only the slice of the store those rows can touch, and writes back only what changed
(``hull_store``): a 5-minute poll costs the change, not the store, and a run over unchanged
sources writes nothing.
"""

import datetime as dt

import dagster as dg
import pandas as pd

from hull_planhat_pipelines.assets.hull_forwarding import (
    FORWARDED_CHECK,
    HullProfilesConfig,
    forward,
    forwarded_check,
)
from hull_planhat_pipelines.assets.planhat import snapshot_key
from hull_planhat_pipelines.assets.reporting import record_events
from hull_planhat_pipelines.resources import HullFirehoseResource, WarehouseResource
from hull_planhat_pipelines.settings import Settings
from hull_planhat_pipelines.warehouse.hull_apply import (
    COPPER_SOURCES,
    HULL_TABLES,
    PLANHAT_SOURCES,
    apply_sync,
)

"""The Copper tables Hull reads: every declared object that says it feeds Hull."""
HULL_KEYS = {name: dg.AssetKey(["hull", name]) for name in HULL_TABLES}


def _counts(frame: pd.DataFrame, column: str) -> dict[str, int]:
    return {str(k): int(v) for k, v in frame[column].value_counts().items()} if len(frame) else {}


def build_hull_assets(settings: Settings) -> list[dg.AssetsDefinition]:
    raw = [dg.AssetKey(["copper", n]) for n in COPPER_SOURCES] + [
        snapshot_key(n) for n in PLANHAT_SOURCES
    ]
    specs = [
        dg.AssetSpec(
            HULL_KEYS["user_upserts"],
            deps=raw,
            description="Per run: each (user, attribute) that differs from the profile store.",
        ),
        dg.AssetSpec(
            HULL_KEYS["account_upserts"],
            deps=raw,
            description="Per run: each (account, attribute) that differs from the store.",
        ),
        dg.AssetSpec(
            HULL_KEYS["events"],
            deps=[dg.AssetKey(["copper", "activities"])],
            description="Copper user activities as events, one row per activity id.",
        ),
        dg.AssetSpec(
            HULL_KEYS["users"],
            deps=[HULL_KEYS["user_upserts"]],
            description="Hull users with the upserts applied and segments evaluated.",
        ),
        dg.AssetSpec(
            HULL_KEYS["accounts"],
            deps=[HULL_KEYS["account_upserts"]],
            description="Hull accounts with the upserts applied and segments evaluated.",
        ),
    ]

    @dg.multi_asset(
        specs=specs,
        name="hull_profiles",
        group_name="hull",
        pool="warehouse",
        can_subset=False,
        check_specs=[FORWARDED_CHECK],
    )
    def hull_profiles(
        context: dg.AssetExecutionContext,
        config: HullProfilesConfig,
        warehouse: WarehouseResource,
        hull_firehose: HullFirehoseResource,
    ):
        now = dt.datetime.now(dt.UTC)
        applied = apply_sync(
            warehouse.database,
            settings,
            run_id=context.run.run_id,
            now=now,
            forwarding=hull_firehose.enabled,
        )
        changes, sources, outbox = applied.changes, applied.sources, applied.outbox
        sizes, segments, columns = applied.sizes, applied.segments, applied.columns
        forwarded = forward(warehouse.database, hull_firehose, dry_run=config.dry_run)
        counts = record_events(
            context,
            [*changes.log, *forwarded.events],
            asset="hull/profiles",
            database=warehouse.database,
            rows=changes.record_log,
        )
        common = {
            "sources_read": dg.MetadataValue.json(sources.rows_read),
            "store_read": dg.MetadataValue.json(applied.store_read),
            "sync_log": dg.MetadataValue.json(counts),
        }
        yield dg.MaterializeResult(
            asset_key=HULL_KEYS["user_upserts"],
            metadata={
                **common,
                **columns["user_upserts"],
                "rows": dg.MetadataValue.int(len(changes.user_upserts)),
                "by_source": dg.MetadataValue.json(_counts(changes.user_upserts, "source_object")),
                "profiles_touched": dg.MetadataValue.int(changes.user_upserts["hull_id"].nunique()),
            },
        )
        yield dg.MaterializeResult(
            asset_key=HULL_KEYS["account_upserts"],
            metadata={
                **common,
                **columns["account_upserts"],
                "rows": dg.MetadataValue.int(len(changes.account_upserts)),
                "by_source": dg.MetadataValue.json(
                    _counts(changes.account_upserts, "source_object")
                ),
                "merged_shells": dg.MetadataValue.int(len(changes.merges)),
            },
        )
        yield dg.MaterializeResult(
            asset_key=HULL_KEYS["events"],
            metadata={
                **columns["events"],
                "dagster/row_count": dg.MetadataValue.int(sizes["events"]),
                "rows": dg.MetadataValue.int(sizes["events"]),
                "new_or_changed": dg.MetadataValue.int(len(changes.events)),
            },
        )
        for kind in ("users", "accounts"):
            yield dg.MaterializeResult(
                asset_key=HULL_KEYS[kind],
                metadata={
                    **columns[kind],
                    "dagster/row_count": dg.MetadataValue.int(sizes[kind]),
                    "rows": dg.MetadataValue.int(sizes[kind]),
                    "segments": dg.MetadataValue.json(segments[kind]),
                    "firehose_outbox_added": dg.MetadataValue.int(outbox),
                    "firehose": dg.MetadataValue.json(forwarded.metadata()),
                },
            )
        yield forwarded_check(forwarded)

    return [hull_profiles]
