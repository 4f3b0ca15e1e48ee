"""Configured destinations: any other Planhat endpoint, one asset per ``destinations:`` entry.

Each runs its SQL over the warehouse, removes the excluded attributes, and sends the records
that changed since they were last delivered (fingerprints, as for companies): a POST that
creates something is never repeated for an unchanged record. Only the rows that may have
changed are read and mapped: the warehouse leaves out, in SQL, the rows whose hash maps to
what was delivered (``warehouse.destination_memo``). ``test_mode`` sends exactly one
sample record and reports the answer; ``dry_run`` sends nothing.
"""

import datetime as dt
import json
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field

from hull_planhat_pipelines.assets.reporting import record_events
from hull_planhat_pipelines.clients.delivery import (
    FAILED,
    DeliveryStopped,
    DeliveryTarget,
    configured_target,
    deliver,
)
from hull_planhat_pipelines.readability import frame_column_schema
from hull_planhat_pipelines.resources import PlanhatResource, WarehouseResource
from hull_planhat_pipelines.settings import DestinationSettings, Settings
from hull_planhat_pipelines.sync.log import SyncEvent
from hull_planhat_pipelines.sync.planhat.destinations import (
    SOURCE_HASH,
    is_collection,
    map_rows,
    select_records,
)
from hull_planhat_pipelines.warehouse.deliveries import (
    JOURNAL_GROUP_SECONDS,
    capture_responses,
    journal,
    step_lock,
)
from hull_planhat_pipelines.warehouse.destination_inputs import (
    SourceFailed,
    SourceNotReady,
    delivery_state,
    destination_inputs,
)
from hull_planhat_pipelines.warehouse.destination_memo import remember_mapped

OUTGOING_GROUP = "outgoing"


class DestinationConfig(dg.Config):
    force: bool = Field(default=False, description="Send every record, changed or not.")
    dry_run: bool = Field(default=False, description="Build the requests, send nothing.")
    test_mode: bool = Field(
        default=False,
        description="Send exactly one sample record and report Planhat's answer "
        "(fingerprints untouched).",
    )


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
    target = configured_target(
        destination.name, destination.method, destination.path, headers=destination.headers
    )

    @dg.asset(
        key=["planhat", f"destination_{destination.name}"],
        deps=[
            dg.AssetKey(["hull", "users"]),
            dg.AssetKey(["hull", "events"]),
            dg.AssetKey(["planhat", "company_snapshots"]),
            # after the delivery (and the snapshot of what it created or left in doubt, if any)
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
        dry_run = config.dry_run
        with step_lock(warehouse.database, context.run.run_id, dry_run=dry_run):
            return _deliver_destination(context, config, planhat, warehouse, destination, target)

    return _destination


def _read_back_when_in_doubt(destination: DestinationSettings) -> bool:
    """Whether a record left in doubt by a crash is safe to journal in groups: an update is
    idempotent, and a create into a collection with stable external ids is read back before
    it is repeated. Other creates keep one intent per record (a crash may repeat only the one
    in flight)."""
    if destination.method != "POST":
        return True
    return is_collection(destination) and destination.stable_key


def _journal_every(destination: DestinationSettings) -> int:
    """Records a journal transaction covers: a bulk request is committed at its answer (held
    across the next request, a crash would send it again: keyless items twice in Planhat),
    and so is a create that cannot be read back; other one-record requests are grouped."""
    if destination.is_bulk or not _read_back_when_in_doubt(destination):
        return 1
    return destination.journal_every


def _deliver_destination(
    context: dg.AssetExecutionContext,
    config: DestinationConfig,
    planhat: PlanhatResource,
    warehouse: WarehouseResource,
    destination: DestinationSettings,
    target: DeliveryTarget,
) -> dg.MaterializeResult:
    now = dt.datetime.now(dt.UTC)
    run_id = context.run.run_id
    forced = config.force or config.test_mode
    try:
        inputs = destination_inputs(warehouse.database, destination, every_row_asked=forced)
    except SourceNotReady as exc:
        # A table the SQL reads has not been materialized yet (first runs): wait.
        context.log.warning(f"destination {destination.name} waits: {exc}")
        return dg.MaterializeResult(
            metadata={"sent": 0, "waiting_for": dg.MetadataValue.text(str(exc))}
        )
    except SourceFailed as exc:
        raise dg.Failure(
            f"destination {destination.name}: its source_sql failed: {exc}",
            allow_retries=False,
        ) from None
    if inputs is None:
        raise dg.Failure("the warehouse is empty: run the Hull sync first")
    mapped, skipped = map_rows(inputs.source, destination)
    state = delivery_state(warehouse.database, destination.name, mapped["key"].tolist())
    if not (config.dry_run or config.test_mode):
        remember_mapped(warehouse.database, destination.name, mapped, whole=not inputs.remembered)
    records, ignored = select_records(
        mapped,
        destination,
        state.fingerprints,
        force=forced,
        planhat_ids=state.planhat_ids,
        in_doubt=state.in_doubt,
    )
    skipped += ignored
    if config.test_mode:
        records = records.head(1)
    records = records.reset_index(drop=True)
    sample = [json.loads(p) for p in records["payload"].head(3)] if len(records) else []
    recording = not (config.dry_run or config.test_mode)
    creates = destination.method == "POST"
    every = _journal_every(destination)
    stopped: DeliveryStopped | None = None
    with (
        planhat.client() as client,
        journal(
            warehouse.database,
            destination.name,
            records,
            run_id,
            every=every,
            intents=creates,
            group_seconds=JOURNAL_GROUP_SECONDS,
            requests_per_minute=planhat.requests_per_minute,
        ) as kept,
    ):
        try:
            result = deliver(
                records,
                target,
                client,
                batch_size=destination.batch_size,
                key_column="key",
                dry_run=config.dry_run,
                checkpoint=kept.checkpoint if recording else None,
                intent=kept.intent if recording else None,
            )
        except DeliveryStopped as exc:
            result, stopped = exc.result, exc
        requests = client.attempts()
    if destination.capture_responses and not config.dry_run and len(records):
        capture_responses(warehouse.database, _responses(destination, result.outcomes, run_id, now))
    outcomes = result.outcomes
    events = [
        SyncEvent(
            event="outgoing.event.error" if status in FAILED else "outgoing.event.success",
            object_type=destination.name,
            object_id=key,
            reason=error or status,
        )
        for status, key, error in zip(
            outcomes["status"], outcomes["key"], outcomes["error"], strict=True
        )
        if status not in ("dry_run", "pending")
    ]
    counts = record_events(
        context,
        [*skipped, *events],
        asset=f"destination/{destination.name}",
        database=warehouse.database,
    )
    if stopped is not None:
        raise dg.Failure(str(stopped), allow_retries=False)
    by_status = result.counts()
    metadata: dict[str, Any] = {
        # what it sends: the columns of its source_sql
        **frame_column_schema(inputs.source.drop(columns=SOURCE_HASH, errors="ignore")),
        "rows_from_sql": dg.MetadataValue.int(inputs.rows),
        "rows_mapped": dg.MetadataValue.int(len(inputs.source)),
        "sent": dg.MetadataValue.int(0 if config.dry_run else len(records)),
        "would_send": dg.MetadataValue.int(len(records) if config.dry_run else 0),
        "failed": dg.MetadataValue.int(sum(by_status.get(s, 0) for s in FAILED)),
        "by_status": dg.MetadataValue.json(by_status),
        "requests": dg.MetadataValue.int(requests),
        "sample_payload": dg.MetadataValue.json(sample),
        "dry_run": dg.MetadataValue.bool(config.dry_run),
        "test_mode": dg.MetadataValue.bool(config.test_mode),
        "sync_log": dg.MetadataValue.json(counts),
    }
    if config.test_mode and len(result.outcomes):
        metadata["test_response"] = dg.MetadataValue.text(str(result.outcomes["response"].iloc[0]))
    return dg.MaterializeResult(metadata=metadata)


def build_destination_assets(settings: Settings) -> list[dg.AssetsDefinition]:
    return [build_destination_asset(d) for d in settings.destinations]
