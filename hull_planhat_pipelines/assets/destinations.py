"""Configured destinations: any other Planhat endpoint, one asset per ``destinations:`` entry.

Each runs its SQL over the warehouse, removes the excluded attributes, and sends the records
that changed since they were last delivered (fingerprints, as for companies): a POST that
creates something is never repeated for an unchanged record. ``test_mode`` sends exactly one
sample record and reports the answer; ``dry_run`` sends nothing.
"""

import datetime as dt
import json
from dataclasses import replace
from typing import Any

import dagster as dg
import duckdb
import pandas as pd

from hull_planhat_pipelines.assets.outgoing import (
    OUTGOING_GROUP,
    commit_deliveries,
    delivery_rows,
    fingerprints_table,
)
from hull_planhat_pipelines.clients.delivery import DeliveryStopped, DeliveryTarget, deliver
from hull_planhat_pipelines.resources import PlanhatResource, WarehouseResource
from hull_planhat_pipelines.settings import DestinationSettings, Settings
from hull_planhat_pipelines.sync.destinations import destination_records
from hull_planhat_pipelines.sync.fingerprints import advance_fingerprints
from hull_planhat_pipelines.sync.log import SyncEvent
from hull_planhat_pipelines.sync.operator_sql import lock_down, run_select
from hull_planhat_pipelines.sync_log import record_events
from hull_planhat_pipelines.warehouse import append_table, connect

API_RESPONSES = "planhat.api_responses"


class DestinationConfig(dg.Config):
    force: bool = False
    """Send every record, changed or not."""
    dry_run: bool = False
    """Build the requests, send nothing."""
    test_mode: bool = False
    """Send exactly one sample record and report Planhat's answer (fingerprints untouched)."""


def _capture(database: str, rows: pd.DataFrame) -> None:
    conn = connect(database)
    try:
        append_table(conn, API_RESPONSES, rows)
    finally:
        conn.close()


def _responses(
    destination: DestinationSettings, outcomes: pd.DataFrame, run_id: str, now: dt.datetime
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "run_id": pd.Series([run_id] * len(outcomes), dtype="string"),
            "captured_at": pd.Series([pd.Timestamp(now)] * len(outcomes)),
            "destination": pd.Series([destination.name] * len(outcomes), dtype="string"),
            "method": pd.Series([destination.method] * len(outcomes), dtype="string"),
            "path": pd.Series([destination.path] * len(outcomes), dtype="string"),
            "key": outcomes["key"].astype("string").values,
            "status": outcomes["status"].astype("string").values,
            "response": outcomes["response"].astype("string").values,
            "error": outcomes["error"].astype("string").values,
        }
    )


def build_destination_asset(destination: DestinationSettings) -> dg.AssetsDefinition:
    # The engine sends our prebuilt payload column (exclusions applied, fingerprinted).
    target = replace(
        DeliveryTarget.from_destination(destination), payload_column="payload", exclude=()
    )

    @dg.asset(
        key=["planhat", f"destination_{destination.name}"],
        deps=[
            dg.AssetKey(["hull", "users"]),
            dg.AssetKey(["hull", "events"]),
            dg.AssetKey(["planhat", "companies"]),
            # after the delivery (and the snapshot of what it wrote, when it wrote anything)
            dg.AssetKey(["planhat", "deliveries"]),
        ],
        group_name=OUTGOING_GROUP,
        kinds={"planhat"},
        tags={"planhat/kind": "destination"},
        pool="warehouse",
        description=(
            f"{destination.method} {destination.path}: the rows of `{destination.source_sql}`"
            + (f", without {', '.join(destination.exclude)}" if destination.exclude else "")
            + "."
        ),
    )
    def _destination(
        context: dg.AssetExecutionContext,
        config: DestinationConfig,
        planhat: PlanhatResource,
        warehouse: WarehouseResource,
    ) -> dg.MaterializeResult:
        now = dt.datetime.now(dt.UTC)
        with warehouse.read_only() as conn:
            if conn is None:
                raise dg.Failure("the warehouse is empty: run the Hull sync first")
            try:
                source = run_select(lock_down(conn), destination.source_sql, destination.name)
            except duckdb.CatalogException as exc:
                # A table the SQL reads has not been materialized yet (first runs): wait.
                context.log.warning(f"destination {destination.name} waits: {exc}")
                return dg.MaterializeResult(
                    metadata={"sent": 0, "waiting_for": dg.MetadataValue.text(str(exc))}
                )
            except duckdb.Error as exc:
                raise dg.Failure(
                    f"destination {destination.name}: its source_sql failed: {exc}",
                    allow_retries=False,
                ) from None
            fingerprints = fingerprints_table(conn)
        records, skipped = destination_records(
            source, destination, fingerprints, force=config.force or config.test_mode
        )
        if config.test_mode:
            records = records.head(1)
        sample = [json.loads(p) for p in records["payload"].head(3)] if len(records) else []
        with planhat.client() as client:
            try:
                result = deliver(
                    records,
                    target,
                    client,
                    batch_size=destination.batch_size,
                    key_column="key",
                    dry_run=config.dry_run,
                )
            except DeliveryStopped as exc:
                raise dg.Failure(str(exc), allow_retries=False) from None
            requests = client.attempts()
        deliveries = delivery_rows(result.outcomes, records, context.run.run_id, now)
        if not (config.dry_run or config.test_mode) and len(records):
            advanced = advance_fingerprints(fingerprints, result.outcomes, records, now)
            commit_deliveries(warehouse.database, deliveries, advanced)
        if destination.capture_responses and not config.dry_run and len(records):
            _capture(
                warehouse.database,
                _responses(destination, result.outcomes, context.run.run_id, now),
            )
        events = [
            SyncEvent(
                event="outgoing.event.error" if row.status == "error" else "outgoing.event.success",
                object_type=destination.name,
                object_id=row.key,
                reason=row.error or row.status,
            )
            for row in result.outcomes.itertuples(index=False)
            if row.status != "dry_run"
        ]
        counts = record_events(
            context, [*skipped, *events], asset=f"destination/{destination.name}"
        )
        metadata: dict[str, Any] = {
            "rows_from_sql": dg.MetadataValue.int(len(source)),
            "sent": dg.MetadataValue.int(len(records)),
            "by_status": dg.MetadataValue.json(result.counts()),
            "requests": dg.MetadataValue.int(requests),
            "sample_payload": dg.MetadataValue.json(sample),
            "dry_run": dg.MetadataValue.bool(config.dry_run),
            "test_mode": dg.MetadataValue.bool(config.test_mode),
            "sync_log": dg.MetadataValue.json(counts),
        }
        if config.test_mode and len(result.outcomes):
            metadata["test_response"] = dg.MetadataValue.text(
                str(result.outcomes["response"].iloc[0])
            )
        return dg.MaterializeResult(metadata=metadata)

    return _destination


def build_destination_assets(settings: Settings) -> list[dg.AssetsDefinition]:
    return [build_destination_asset(d) for d in settings.destinations]
