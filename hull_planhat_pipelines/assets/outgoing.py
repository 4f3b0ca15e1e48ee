"""Hull -> Planhat: diffed payloads and their bulk delivery.

``planhat/{company,enduser,activity,metric}_payloads`` hold only the records whose mapped
content differs from what was last delivered successfully (fingerprints), unless a forced send
is asked for. ``planhat/deliveries`` sends them, companies before endusers (an enduser names its
company), and records one row per record; fingerprints advance in the same transaction, and only
for records Planhat accounted for, so a failed record is retried by the next run.
"""

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import dagster as dg
import duckdb
import pandas as pd

from hull_planhat_pipelines.clients.delivery import (
    OUTCOME_COLUMNS,
    DeliveryStopped,
    DeliveryTarget,
    deliver,
)
from hull_planhat_pipelines.resources import PlanhatResource, WarehouseResource
from hull_planhat_pipelines.settings import Settings
from hull_planhat_pipelines.sync.fingerprints import (
    FINGERPRINT_COLUMNS,
    advance_fingerprints,
    empty_fingerprints,
)
from hull_planhat_pipelines.sync.log import SyncEvent
from hull_planhat_pipelines.sync.planhat_payloads import (
    activity_payloads,
    all_metric_payloads,
    company_payloads,
    drop_unknown_companies,
    enduser_payloads,
    payloads_as_json,
)
from hull_planhat_pipelines.sync_log import record_events
from hull_planhat_pipelines.warehouse import append_table, connect, run, table_exists

OUTGOING_GROUP = "outgoing"
FINGERPRINTS = "planhat.delivery_fingerprints"
DELIVERIES = "planhat.deliveries"
DELIVERY_COLUMNS = ["run_id", "delivered_at", *OUTCOME_COLUMNS, "hull_id", "change"]


class PayloadConfig(dg.Config):
    force: bool = False
    """Send every in-segment record, changed or not (the seed's "batch send")."""


class DeliveryConfig(dg.Config):
    dry_run: bool = False
    """Compute the requests and report them; send nothing, advance nothing."""


def read_table(conn: duckdb.DuckDBPyConnection | None, table: str) -> pd.DataFrame | None:
    if conn is None or not table_exists(conn, *table.split(".")):
        return None
    return conn.execute(f"select * from {table}").fetchdf()


def fingerprints_table(conn: duckdb.DuckDBPyConnection | None) -> pd.DataFrame:
    frame = read_table(conn, FINGERPRINTS)
    return frame if frame is not None else empty_fingerprints()


def _skip_counts(events: list[SyncEvent]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for event in events:
        if event.event.endswith(".skip"):
            counts[event.reason or "?"] = counts.get(event.reason or "?", 0) + 1
    return counts


def _payload_asset(
    name: str,
    deps: list[list[str]],
    description: str,
    build: Callable[[duckdb.DuckDBPyConnection | None, pd.DataFrame, bool], tuple],
) -> dg.AssetsDefinition:
    @dg.asset(
        key=["planhat", name],
        deps=[dg.AssetKey(d) for d in deps],
        io_manager_key="warehouse_io_manager",
        group_name=OUTGOING_GROUP,
        kinds={"duckdb"},
        pool="warehouse",
        description=description,
    )
    def _payloads(
        context: dg.AssetExecutionContext, config: PayloadConfig, warehouse: WarehouseResource
    ) -> pd.DataFrame:
        with warehouse.read_only() as conn:
            payloads, events = build(conn, fingerprints_table(conn), config.force)
        counts = record_events(context, events, asset=f"planhat/{name}")
        changes = payloads["change"].value_counts().to_dict() if len(payloads) else {}
        sample = payloads["payload"].head(3).tolist() if len(payloads) else []
        context.add_output_metadata(
            {
                "rows": dg.MetadataValue.int(len(payloads)),
                "forced": dg.MetadataValue.bool(config.force),
                "by_change": dg.MetadataValue.json({str(k): int(v) for k, v in changes.items()}),
                "skipped_by_reason": dg.MetadataValue.json(_skip_counts(events)),
                "sync_log": dg.MetadataValue.json(counts),
                "sample": dg.MetadataValue.json(json.loads(json.dumps(sample, default=str))),
            }
        )
        return payloads_as_json(payloads)

    return _payloads


def build_payload_assets(settings: Settings) -> list[dg.AssetsDefinition]:
    def companies(conn, fingerprints, force):
        accounts = read_table(conn, "hull.accounts")
        users = read_table(conn, "planhat.users")
        if accounts is None or (users is None and settings.planhat.owner_attribute):
            waiting = (
                []
                if accounts is None
                else [
                    SyncEvent(
                        event="outgoing.account.skip",
                        reason="Planhat users not fetched yet: owners cannot be validated",
                        details={"accounts": len(accounts)},
                    )
                ]
            )
            payloads, _ = company_payloads(_no_profiles(), None, settings, fingerprints)
            return payloads, waiting
        return company_payloads(accounts, users, settings, fingerprints, force=force)

    def endusers(conn, fingerprints, force):
        users = read_table(conn, "hull.users")
        accounts = read_table(conn, "hull.accounts")
        users = users if users is not None else _no_profiles()
        payloads, events = enduser_payloads(users, accounts, settings, fingerprints, force=force)
        kept, skipped = drop_unknown_companies(payloads, _known_company_ids(conn, fingerprints))
        return kept, [*events, *skipped]

    def activities(conn, fingerprints, force):
        events = read_table(conn, "hull.events")
        users = read_table(conn, "hull.users")
        if events is None or users is None:
            events, users = _no_events(), _no_profiles()
        accounts = read_table(conn, "hull.accounts")
        return activity_payloads(events, users, accounts, settings, fingerprints)

    def metrics(conn, fingerprints, force):
        if conn is None:
            return all_metric_payloads(duckdb.connect(), [], dt.datetime.now(dt.UTC))
        return all_metric_payloads(
            conn,
            settings.planhat.metrics,
            dt.datetime.now(dt.UTC),
            fingerprints=fingerprints,
            force=force,
        )

    return [
        _payload_asset(
            "company_payloads",
            [["hull", "accounts"], ["planhat", "users"]],
            "Accounts in planhat.company_segments whose mapped company changed since it was "
            "last delivered; owner and co-owner must be Planhat user ids.",
            companies,
        ),
        _payload_asset(
            "enduser_payloads",
            [["hull", "users"], ["hull", "accounts"], ["planhat", "company_payloads"]],
            "Users in planhat.contact_segments whose mapped enduser changed, with their "
            "account's external id as companyExternalId (which Planhat must have, or get now).",
            endusers,
        ),
        _payload_asset(
            "activity_payloads",
            [["hull", "events"], ["hull", "users"], ["hull", "accounts"]],
            "Events in planhat.tracking_events of users in the contact segments, not sent before.",
            activities,
        ),
        _payload_asset(
            "metric_payloads",
            [["hull", "accounts"], ["copper", "opportunities"]],
            "Each configured metric's SQL result as dimension data, when its value changed.",
            metrics,
        ),
    ]


def _known_company_ids(
    conn: duckdb.DuckDBPyConnection | None, fingerprints: pd.DataFrame
) -> set[str]:
    """External ids Planhat has (latest snapshot), was sent before, or is being sent now."""
    known = set(fingerprints.loc[fingerprints["target"] == "companies", "key"].astype(str))
    queries = {
        ("planhat", "company_payloads"): "select key from planhat.company_payloads",
        ("planhat", "companies"): (
            "select external_id from planhat.companies where external_id is not null "
            "and partition_date = (select max(partition_date) from planhat.companies)"
        ),
    }
    for table, sql in queries.items():
        if conn is not None and table_exists(conn, *table):
            known |= {str(row[0]) for row in conn.execute(sql).fetchall() if row[0] is not None}
    return known


def _no_profiles() -> pd.DataFrame:
    return pd.DataFrame(
        {c: pd.Series([], dtype=object) for c in ("hull_id", "external_id", "attributes")}
        | {"segments": pd.Series([], dtype=object), "updated_at": pd.Series([], dtype=object)}
    )


def _no_events() -> pd.DataFrame:
    return pd.DataFrame(
        {
            c: pd.Series([], dtype=object)
            for c in ("event_id", "user_hull_id", "name", "properties", "occurred_at", "source")
        }
    )


TARGETS: list[tuple[str, Callable[[], DeliveryTarget], str]] = [
    ("company_payloads", DeliveryTarget.companies, "batch_size"),
    ("enduser_payloads", DeliveryTarget.endusers, "batch_size"),
    ("activity_payloads", DeliveryTarget.activities, "analytics_batch_size"),
    ("metric_payloads", DeliveryTarget.metrics, "analytics_batch_size"),
]


def delivery_rows(
    outcomes: pd.DataFrame, payloads: pd.DataFrame, run_id: str, now: dt.datetime
) -> pd.DataFrame:
    rows = outcomes.copy()
    rows["hull_id"] = payloads["hull_id"].values if "hull_id" in payloads else None
    rows["change"] = payloads["change"].values if "change" in payloads else None
    rows["run_id"] = run_id
    rows["delivered_at"] = pd.Timestamp(now)
    rows = rows.reindex(columns=DELIVERY_COLUMNS)
    for column in DELIVERY_COLUMNS:
        if column in ("request", "attempts", "batch"):
            rows[column] = pd.to_numeric(rows[column], errors="coerce").astype("Int64")
        elif column == "delivered_at":
            rows[column] = pd.to_datetime(rows[column], utc=True)
        else:
            rows[column] = rows[column].astype("string")
    return rows


def commit_deliveries(database: str, deliveries: pd.DataFrame, fingerprints: pd.DataFrame) -> None:
    """Delivery rows and the advanced fingerprints, in one transaction."""
    conn = connect(database)
    try:
        run(conn, "create schema if not exists planhat")
        run(conn, "begin transaction")
        append_table(conn, DELIVERIES, deliveries)
        conn.register(
            "_fingerprints",
            fingerprints[FINGERPRINT_COLUMNS].astype(
                {c: "string" for c in ("target", "key", "fingerprint", "fields")}
            ),
        )
        run(conn, f"create or replace table {FINGERPRINTS} as select * from _fingerprints")
        run(conn, "commit")
    except Exception:
        run(conn, "rollback")
        raise
    finally:
        conn.close()


def build_delivery_asset(settings: Settings) -> dg.AssetsDefinition:
    @dg.asset(
        key=["planhat", "deliveries"],
        deps=[dg.AssetKey(["planhat", name]) for name, _, _ in TARGETS],
        group_name=OUTGOING_GROUP,
        kinds={"duckdb"},
        pool="warehouse",
        description=(
            "Sends the payloads in bulk and records one row per record: target, key, status, "
            "error, response excerpt. Fingerprints advance only for delivered records."
        ),
    )
    def planhat_deliveries(
        context: dg.AssetExecutionContext,
        config: DeliveryConfig,
        planhat: PlanhatResource,
        warehouse: WarehouseResource,
    ) -> dg.MaterializeResult:
        now = dt.datetime.now(dt.UTC)
        with warehouse.read_only() as conn:
            fingerprints = fingerprints_table(conn)
            payloads = {name: read_table(conn, f"planhat.{name}") for name, _, _ in TARGETS}
        frames: list[pd.DataFrame] = []
        summary: dict[str, Any] = {}
        planned: dict[str, int] = {}
        events: list[SyncEvent] = []
        stopped: DeliveryStopped | None = None
        with planhat.client() as client:
            for name, target_of, size_key in TARGETS:
                records = payloads.get(name)
                if records is None or records.empty:
                    continue
                target = target_of()
                try:
                    result = deliver(
                        records,
                        target,
                        client,
                        batch_size=getattr(settings.planhat, size_key),
                        key_column="key",
                        dry_run=config.dry_run,
                    )
                except DeliveryStopped as exc:
                    result, stopped = exc.result, exc
                frames.append(delivery_rows(result.outcomes, records, context.run.run_id, now))
                summary[target.name] = result.counts()
                planned[target.name] = len(result.planned)
                events += _delivery_events(target.name, result.outcomes)
                if not config.dry_run and stopped is None:
                    fingerprints = advance_fingerprints(fingerprints, result.outcomes, records, now)
                if stopped is not None:
                    break
            requests = client.attempts()
            by_kind = client.requests_by_kind()
        deliveries = (
            pd.concat(frames)
            if frames
            else delivery_rows(
                pd.DataFrame(columns=DELIVERY_COLUMNS), pd.DataFrame(), context.run.run_id, now
            )
        )
        if not config.dry_run and (frames or stopped):
            commit_deliveries(warehouse.database, deliveries, fingerprints)
        counts = record_events(context, events, asset="planhat/deliveries")
        if stopped is not None:
            raise dg.Failure(str(stopped), allow_retries=False)
        total = sum(sum(c.values()) for c in summary.values())
        failed = sum(c.get("error", 0) + c.get("ignored", 0) for c in summary.values())
        if total and failed == total and not config.dry_run:
            raise dg.Failure(f"every one of {total} records failed: {summary}")
        statuses: dict[str, int] = {}
        for target_counts in summary.values():
            for status, n in target_counts.items():
                statuses[status] = statuses.get(status, 0) + n
        return dg.MaterializeResult(
            metadata={
                "sent": dg.MetadataValue.int(total),
                "created": dg.MetadataValue.int(statuses.get("created", 0)),
                "updated": dg.MetadataValue.int(statuses.get("updated", 0)),
                "unchanged": dg.MetadataValue.int(statuses.get("unchanged", 0)),
                "failed": dg.MetadataValue.int(failed),
                "requests": dg.MetadataValue.int(requests),
                "requests_by_kind": dg.MetadataValue.json(by_kind),
                "by_target": dg.MetadataValue.json(summary),
                "dry_run": dg.MetadataValue.bool(config.dry_run),
                "planned_requests": dg.MetadataValue.json(planned),
                "analytics": dg.MetadataValue.json(_analytics(deliveries)),
                "sync_log": dg.MetadataValue.json(counts),
            }
        )

    return planhat_deliveries


def _analytics(deliveries: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Planhat's analytics answers: ``processed`` (accepted) and ``errors`` per endpoint."""
    found = {}
    for target in ("activities", "metrics"):
        rows = deliveries[deliveries["target"] == target]
        if len(rows):
            found[target] = {
                "processed": int(rows["status"].isin(["sent", "created", "updated"]).sum()),
                "errors": int((rows["status"] == "error").sum()),
            }
    return found


_EVENT_KIND = {
    "companies": "account",
    "endusers": "user",
    "activities": "event",
    "metrics": "account",
}


def _delivery_events(target: str, outcomes: pd.DataFrame) -> list[SyncEvent]:
    kind = _EVENT_KIND.get(target, "account")
    events = []
    for row in outcomes.itertuples(index=False):
        if row.status in ("error", "ignored"):
            events.append(
                SyncEvent(
                    event=f"outgoing.{kind}.error",
                    object_type=target,
                    object_id=row.key,
                    reason=row.error,
                )
            )
        elif row.status != "dry_run":
            events.append(
                SyncEvent(
                    event=f"outgoing.{kind}.success",
                    object_type=target,
                    object_id=row.key,
                    reason=row.status,
                )
            )
    return events
