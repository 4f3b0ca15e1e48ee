"""Hull -> Planhat: diffed payloads and their bulk delivery.

``planhat/{company,enduser,activity,metric}_payloads`` hold only the records whose mapped
content differs from what was last delivered successfully (fingerprints), unless a forced send
is asked for. ``planhat/deliveries`` sends them, companies before endusers (an enduser names its
company), and records one row per record; fingerprints advance in the same transaction, and only
for records Planhat accounted for, so a failed record is retried by the next run.
"""

import datetime as dt
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field

from hull_planhat_pipelines.assets.reporting import record_events
from hull_planhat_pipelines.clients.delivery import (
    FAILED,
    PLANHAT_TARGETS,
    DeliveryStopped,
    DeliveryTarget,
    deliver,
)
from hull_planhat_pipelines.readability import frame_column_schema
from hull_planhat_pipelines.resources import PlanhatResource, WarehouseResource
from hull_planhat_pipelines.settings import Settings
from hull_planhat_pipelines.sync.log import SyncEvent
from hull_planhat_pipelines.sync.planhat.activities import (
    activity_payloads,
    sql_activity_keys,
    sql_activity_payloads,
)
from hull_planhat_pipelines.sync.planhat.companies import OWNER_SKIPS, company_payloads
from hull_planhat_pipelines.sync.planhat.endusers import (
    addressed_by_id,
    after_movers,
    drop_unknown_companies,
    enduser_payloads,
    held_under,
    keys_of_users,
    matchable_keys,
    moved_fingerprints,
    not_taking_over,
    planhat_enduser_ids,
)
from hull_planhat_pipelines.sync.planhat.fingerprints import DELIVERED_STATUSES, empty_fingerprints
from hull_planhat_pipelines.sync.planhat.metrics import all_metric_payloads, metric_keys
from hull_planhat_pipelines.sync.planhat.settlement import (
    DROPPED_REASON,
    NOT_APPLIED_REASON,
    settle,
)
from hull_planhat_pipelines.sync.planhat.shared import (
    ACTIVITIES,
    COMPANIES,
    ENDUSERS,
    METRICS,
    SEND_ORDER,
    WAITS_FOR,
    payloads_as_json,
)
from hull_planhat_pipelines.sync.planhat.snapshot_due import MATCHED
from hull_planhat_pipelines.warehouse import deliveries, replace_table, table_exists
from hull_planhat_pipelines.warehouse.activity_inputs import activity_inputs
from hull_planhat_pipelines.warehouse.deliveries import (
    DELIVERY_COLUMNS,
    delivery_rows,
    fingerprints_table,
    make_checkpoint,
    make_intent,
    read_rows,
    read_table,
    step_lock,
    unseen_by_snapshot,
)
from hull_planhat_pipelines.warehouse.payload_scope import (
    Scope,
    accounts_of_users,
    forced_not_taken,
    remember_scopes,
    scope,
    with_skips,
)
from hull_planhat_pipelines.warehouse.planhat_queries import (
    activity_answers,
    metric_answers,
    without_unchanged,
)

OUTGOING_GROUP = "outgoing"


class PayloadConfig(dg.Config):
    force: bool = Field(
        default=False,
        description="Send every in-segment record, changed or not (a forced batch send).",
    )


class DeliveryConfig(dg.Config):
    dry_run: bool = Field(
        default=False,
        description="Compute the requests and report them; send nothing, advance nothing.",
    )


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
    build: Callable[..., tuple],
    targets: Sequence[str],
) -> dg.AssetsDefinition:
    """A payload asset; ``targets``: the delivery targets whose fingerprints ``build`` is given
    (none: ``build`` reads the few it needs itself)."""

    @dg.asset(
        key=["planhat", name],
        deps=[dg.AssetKey(d) for d in deps],
        group_name=OUTGOING_GROUP,
        kinds={"duckdb"},
        pool="warehouse",
        description=description,
    )
    def _payloads(
        context: dg.AssetExecutionContext, config: PayloadConfig, warehouse: WarehouseResource
    ) -> dg.MaterializeResult:
        scopes: dict[str, Scope] = {}
        with warehouse.read_only() as conn:
            fingerprints = fingerprints_table(conn, targets) if targets else empty_fingerprints()
            payloads, events = build(conn, fingerprints, config.force, scopes)
        # logged before the scope is remembered: a skip the next run leaves out is never lost
        counts = record_events(
            context, events, asset=f"planhat/{name}", database=warehouse.database
        )
        remember_scopes(warehouse.database, scopes.values(), payloads, forced=config.force)
        changes = payloads["change"].value_counts().to_dict() if len(payloads) else {}
        sample = payloads["payload"].head(3).tolist() if len(payloads) else []
        written = replace_table(warehouse.database, f"planhat.{name}", payloads_as_json(payloads))
        return dg.MaterializeResult(
            metadata={
                **written,
                "rows": dg.MetadataValue.int(len(payloads)),
                "forced": dg.MetadataValue.bool(config.force),
                "by_change": dg.MetadataValue.json({str(k): int(v) for k, v in changes.items()}),
                "skipped_by_reason": dg.MetadataValue.json(_skip_counts(events)),
                # skipped by an earlier run and unchanged since: logged then, not again
                "skipped_before": dg.MetadataValue.int(
                    sum(s.skipped_before for s in scopes.values())
                ),
                "sync_log": dg.MetadataValue.json(counts),
                "sample": dg.MetadataValue.json(json.loads(json.dumps(sample, default=str))),
            }
        )

    return _payloads


def _moved(conn: Any, ids: dict[str, str], keys: dict[str, str]) -> pd.DataFrame:
    """Users whose Planhat enduser (``ids``: ``planhat_enduser_ids``) holds what was sent under
    other keys: their email or external id changed (``held_under_other_keys``), or changed and
    changed back (``returned_to_keys``). Sent with that enduser's ``_id``, each updates it
    instead of creating a second one or leaving the other value there."""
    candidates = pd.DataFrame(
        [
            (hull_id, keys[hull_id], planhat_id)
            for hull_id, planhat_id in ids.items()
            if hull_id in keys
        ],
        columns=["hull_id", "key", "planhat_id"],
    )
    renamed = deliveries.held_under_other_keys(conn, candidates)
    returned = deliveries.returned_to_keys(conn, candidates)
    returned = returned[~returned["hull_id"].isin(renamed["hull_id"])]
    if renamed.empty or returned.empty:
        return returned if renamed.empty else renamed
    return pd.concat([renamed, returned], ignore_index=True)


def _moved_company(
    conn: Any, ids: dict[str, str], payloads: pd.DataFrame, addressed: dict[str, str]
) -> dict[str, str]:
    """Users about to be sent whose Planhat enduser (``ids``) is held in another company than
    their payload names (``held_in_other_companies``), and their enduser's ``_id``."""
    if conn is None or payloads.empty:
        return {}
    sent = payloads[
        payloads["hull_id"].astype(str).isin(ids.keys())
        & ~payloads["hull_id"].astype(str).isin(addressed.keys())
    ]
    candidates = pd.DataFrame(
        {
            "hull_id": sent["hull_id"].astype(str),
            "key": sent["key"].astype(str),
            "planhat_id": [ids[str(h)] for h in sent["hull_id"]],
            "company_external_id": sent["company_external_id"].astype(str),
        }
    )
    return deliveries.held_in_other_companies(conn, candidates)


def build_payload_assets(settings: Settings) -> list[dg.AssetsDefinition]:
    def companies(conn, fingerprints, force, scopes):
        vanished = deliveries.vanished_companies(conn, fingerprints)
        # a company deleted in Planhat keeps its fingerprint until re-sent: map them all
        mapped = scope(conn, settings, "companies", force=force or bool(vanished))
        accounts = read_rows(conn, "hull.accounts", mapped.where)
        if conn is not None and table_exists(conn, "hull", "accounts"):
            scopes["companies"] = mapped
        users = read_table(conn, "planhat.team_members")
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
        # and one whose forced payload no delivery took yet is forced again
        again = vanished | forced_not_taken(conn, COMPANIES)
        kept = fingerprints[
            ~((fingerprints["target"] == "companies") & fingerprints["key"].isin(again))
        ]
        payloads, events = company_payloads(accounts, users, settings, kept, force=force)
        if "companies" in scopes:
            scopes["companies"] = with_skips(
                mapped, accounts, events, "outgoing.account.skip", OWNER_SKIPS
            )
        return payloads, events

    def endusers(conn, fingerprints, force, scopes):
        vanished = deliveries.vanished_companies(conn, fingerprints)
        mapped = scope(conn, settings, "endusers", force=force or bool(vanished))
        users = read_rows(conn, "hull.users", mapped.where)
        accounts = accounts_of_users(conn, mapped, users)
        if conn is not None and table_exists(conn, "hull", "users"):
            scopes["endusers"] = mapped
        users = users if users is not None else _no_profiles()
        # the fingerprints of the users mapped only, beside the companies' (all of them)
        user_keys = keys_of_users(users)
        keys = None if mapped.where is None else set(user_keys.values())
        ours = deliveries.fingerprints_of_keys(conn, ENDUSERS, keys)
        if len(ours):
            fingerprints = pd.concat([f for f in (fingerprints, ours) if len(f)], ignore_index=True)
        # a key changed (and maybe changed back): compared with what Planhat's enduser holds
        enduser_ids = planhat_enduser_ids(users) if conn is not None else {}
        moved = _moved(conn, enduser_ids, user_keys)
        if len(moved):
            other_keys = {str(k) for keys in moved["other_keys"] for k in keys}
            others = deliveries.fingerprints_of_keys(conn, ENDUSERS, other_keys)
            fingerprints = moved_fingerprints(fingerprints, moved, others)
        payloads, events = enduser_payloads(users, accounts, settings, fingerprints, force=force)
        # their endusers follow the recreated company, until a delivery takes them
        again = forced_not_taken(conn, ENDUSERS)
        if (vanished or again) and not force:
            every, _ = enduser_payloads(users, accounts, settings, fingerprints, force=True)
            follow = every["company_external_id"].astype("string").isin(vanished).fillna(False)
            follow = follow.to_numpy() | every["key"].isin(again).to_numpy()
            extra = every[follow & ~every["key"].isin(payloads["key"]).to_numpy()]
            payloads = pd.concat([payloads, extra], ignore_index=True)
        by_id = dict(zip(moved["hull_id"].astype(str), moved["planhat_id"], strict=True))
        by_id.update(_moved_company(conn, enduser_ids, payloads, by_id))
        payloads = addressed_by_id(payloads, by_id)
        kept, skipped = drop_unknown_companies(
            payloads, deliveries.known_companies(conn, fingerprints)
        )
        # a record that could match another's enduser by a key that enduser leaves goes after
        # it; an enduser two users were built from is renamed by neither (never by _id)
        sent = [str(h) for h in kept["hull_id"] if str(h) in enduser_ids]
        shared_by = Counter(enduser_ids[h] for h in sent)
        sent = [h for h in sent if shared_by[enduser_ids[h]] == 1]
        by_enduser = deliveries.enduser_snapshot_keys(conn, [enduser_ids[h] for h in sent])
        snapshot_keys = {h: by_enduser.get(enduser_ids[h], set()) for h in sent}
        held = held_under(moved, snapshot_keys)
        # and the endusers of profiles outside the delivery that answer to a key it sends
        answering = deliveries.endusers_answering(conn, matchable_keys(kept))
        held |= {h: keys for h, keys in answering.items() if h not in held}
        kept, taking = not_taking_over(kept, held)
        return after_movers(kept, held), [*events, *skipped, *taking]

    def activities(conn, fingerprints, force, scopes):
        # tracked events not sent yet, and their users only: not the whole store each cycle
        found = activity_inputs(
            conn, settings.planhat.tracking_events, settings.planhat.contact_segments
        )
        candidates = set() if found is None else set(found.events["event_id"].astype(str))
        queries = settings.planhat.activity_queries
        answers = activity_answers(conn, queries) if conn is not None and queries else []
        # the fingerprints of the candidates and of the answers' activities only, not of
        # every activity ever sent, which grow with the history
        keys = candidates | sql_activity_keys(answers)
        fingerprints = deliveries.fingerprints_of_keys(conn, ACTIVITIES, keys)
        if found is None:
            payloads, logged = activity_payloads(
                _no_events(), _no_profiles(), None, settings, fingerprints
            )
        else:
            payloads, logged = activity_payloads(
                found.events,
                found.users,
                found.accounts,
                settings,
                fingerprints,
                left_out=found.left_out,
            )
        if not answers:
            return payloads, logged
        extra, more = sql_activity_payloads(answers, fingerprints)
        if extra.empty:
            return payloads, [*logged, *more]
        if payloads.empty:
            return extra, [*logged, *more]
        # a column the queries left empty (no date) takes the events' type, as pandas did
        # before it deprecated typing by all-empty columns
        empty = [c for c in extra.columns if c in payloads and extra[c].isna().all()]
        extra = extra.astype({c: payloads[c].dtype for c in empty})
        return pd.concat([payloads, extra], ignore_index=True), [*logged, *more]

    def metrics(conn, _fingerprints, force, scopes):
        now = dt.datetime.now(dt.UTC)
        if conn is None:
            return all_metric_payloads([], now)
        answers = metric_answers(conn, settings.planhat.metrics)
        if not force:  # the rows sent unchanged are left out in SQL (a forced send keeps all)
            answers = without_unchanged(conn, answers, now)
        # the fingerprints of today's keys only, not of every day ever sent
        fingerprints = deliveries.fingerprints_of_keys(conn, METRICS, metric_keys(answers, now))
        return all_metric_payloads(answers, now, fingerprints=fingerprints, force=force)

    return [
        _payload_asset(
            "company_payloads",
            [["hull", "accounts"], ["planhat", "team_members"]],
            "Accounts in planhat.company_segments whose mapped company changed since it was "
            "last delivered; owner and co-owner must be Planhat user ids.",
            companies,
            [COMPANIES],
        ),
        _payload_asset(
            "enduser_payloads",
            [["hull", "users"], ["hull", "accounts"], ["planhat", "company_payloads"]],
            "Users in planhat.contact_segments whose mapped enduser changed, with their "
            "account's external id as companyExternalId (which Planhat must have, or get now).",
            endusers,
            [COMPANIES],  # which companies Planhat has (or had) from us; endusers: in scope
        ),
        _payload_asset(
            "activity_payloads",
            [["hull", "events"], ["hull", "users"], ["hull", "accounts"]],
            "Events in planhat.tracking_events of users in the contact segments, not sent before.",
            activities,
            [],  # only the candidates' fingerprints (fingerprints_of_keys)
        ),
        _payload_asset(
            "metric_payloads",
            [["hull", "accounts"], ["copper", "opportunities"]],
            "Each configured metric's SQL result as dimension data, when its value changed.",
            metrics,
            [],  # only the fingerprints of the answers' keys (metric_keys)
        ),
    ]


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


NOT_RESENT = frozenset({*DELIVERED_STATUSES, "unknown"})
"""Analytics posts cannot be read back: one whose answer was lost is not posted again (it may
have landed; a second post would count it twice). It still fails the delivery check."""
ANALYTICS_TARGETS = frozenset({"activities", "metrics"})


IN_FLIGHT = (
    "outcome unknown: the run stopped while this was being posted; not posted again "
    "(a second post could count it twice)"
)


def _abandon_in_flight(
    database: str, target: str, records: pd.DataFrame, run_id: str, *, kind: str
) -> tuple[pd.DataFrame, list[SyncEvent]]:
    """Analytics items a crashed run left ``pending`` (posted, answer never read): recorded
    ``unknown`` (not re-sent, failing the check) and taken out of this run's records."""
    stuck = deliveries.pending_keys(database, target, records["key"].astype(str).unique().tolist())
    if not stuck:
        return records, []
    hit = records["key"].astype(str).isin(stuck).to_numpy()
    part = records.loc[hit]
    if part.empty:
        return records, []
    outcomes = deliveries.commit_statuses(
        database, target, part, "unknown", run_id, error=IN_FLIGHT, delivered=NOT_RESENT
    )
    events = [
        SyncEvent(event=f"outgoing.{kind}.error", object_type=target, object_id=k, reason=IN_FLIGHT)
        for k in outcomes["key"]
    ]
    return records.loc[~hit], events


def _key_lists(texts: pd.Series) -> list[list[str]]:
    """Lists of keys from their JSON text (missing: none)."""
    return [json.loads(t) if isinstance(t, str) and t else [] for t in texts]


def _settle(
    database: str, target: str, records: pd.DataFrame, run_id: str
) -> tuple[pd.DataFrame, list[SyncEvent], pd.DataFrame]:
    """Items an earlier bulk answer did not name, settled against the latest snapshot (see
    ``sync.planhat.settlement``); the confirmed and dropped rows committed at once. Returns
    the rows to send, the events, and the rows held back (neither sent nor confirmed: waiting
    for a newer snapshot, or skipped after repeated drops)."""
    companies = (
        records["company_external_id"].dropna().astype(str).unique().tolist()
        if "company_external_id" in records
        else []
    )
    known = deliveries.settlement_inputs(
        database, target, records["key"].astype(str).unique().tolist(), companies
    )
    if known is None:
        return records, [], records.iloc[:0]
    settlement = settle(
        target,
        records,
        known.history,
        known.present,
        known.snapshot_at,
        known.company_at,
        written_at=known.written_at,
    )
    for frame, status, error in (
        (settlement.confirmed, "confirmed", None),
        (settlement.dropped, "dropped", DROPPED_REASON.get(target)),
        (settlement.not_applied, "dropped", NOT_APPLIED_REASON),
    ):
        if not frame.empty:
            deliveries.commit_statuses(database, target, frame, status, run_id, error=error)
    held = records.index.difference(settlement.send.index).difference(settlement.confirmed.index)
    return settlement.send, settlement.events, records.loc[held]


def build_delivery_asset(
    settings: Settings, targets: Sequence[DeliveryTarget] = PLANHAT_TARGETS
) -> dg.AssetsDefinition:
    """``planhat/deliveries`` over ``targets``, in order (each reads ``planhat.<payloads>``)."""

    @dg.asset(
        key=["planhat", "deliveries"],
        deps=[dg.AssetKey(["planhat", t.payloads]) for t in targets if t.payloads],
        group_name=OUTGOING_GROUP,
        kinds={"duckdb"},
        pool="warehouse",
        description=(
            "Sends the payloads in bulk and records one row per record: target, key, status, "
            "error, response excerpt. Each request's rows and fingerprints are committed as "
            "soon as its answer is read; fingerprints advance only for delivered records."
        ),
    )
    def planhat_deliveries(
        context: dg.AssetExecutionContext,
        config: DeliveryConfig,
        planhat: PlanhatResource,
        warehouse: WarehouseResource,
    ) -> dg.MaterializeResult:
        with step_lock(warehouse.database, context.run.run_id, dry_run=config.dry_run):
            return _deliver_all(context, config, planhat, warehouse, settings, targets)

    return planhat_deliveries


def _deliver_all(
    context: dg.AssetExecutionContext,
    config: DeliveryConfig,
    planhat: PlanhatResource,
    warehouse: WarehouseResource,
    settings: Settings,
    targets: Sequence[DeliveryTarget],
) -> dg.MaterializeResult:
    now = dt.datetime.now(dt.UTC)
    run_id = context.run.run_id
    tables = deliveries.read_tables(warehouse.database, [f"planhat.{t.payloads}" for t in targets])
    payloads = {t.name: tables[f"planhat.{t.payloads}"] for t in targets}
    frames: list[pd.DataFrame] = []
    summary: dict[str, Any] = {}
    planned: dict[str, list[Any]] = {}
    events: list[SyncEvent] = []
    unseen: dict[str, int] = {}  # matched records the newest snapshot does not list
    stopped: DeliveryStopped | None = None
    with planhat.client() as client:
        for target in targets:
            records = payloads.get(target.name)
            if records is None or records.empty:
                continue
            ordered = SEND_ORDER in records.columns
            if ordered:  # the table keeps the order; sorted again all the same
                records = records.sort_values(SEND_ORDER, kind="stable").reset_index(drop=True)
            held_keys: list[str] = []  # records held back: their followers wait too
            if target.settled_by_snapshot and not config.dry_run:
                records, settled, held = _settle(warehouse.database, target.name, records, run_id)
                events += settled
                held_keys = held["key"].astype(str).tolist()
                if records.empty:
                    continue
            waits = ordered and WAITS_FOR in records.columns
            if waits:  # stored as JSON text
                records = records.assign(**{WAITS_FOR: _key_lists(records[WAITS_FOR])})
            delivered = DELIVERED_STATUSES if target.repeatable else NOT_RESENT
            intent = None
            if not target.repeatable and not config.dry_run:
                records, abandoned = _abandon_in_flight(
                    warehouse.database, target.name, records, run_id, kind=target.event_kind
                )
                events += abandoned
                intent = make_intent(warehouse.database, records, run_id)
                if records.empty:
                    continue
            checkpoint = (
                None
                if config.dry_run
                else make_checkpoint(warehouse.database, records, run_id, delivered=delivered)
            )
            try:
                result = deliver(
                    records,
                    target,
                    client,
                    batch_size=min(settings.planhat.batch_size_for(target.host), target.max_batch),
                    dry_run=config.dry_run,
                    checkpoint=checkpoint,
                    intent=intent,
                    order_column=SEND_ORDER if ordered else None,
                    waits_column=WAITS_FOR if waits else None,
                    undelivered_keys=held_keys,
                )
            except DeliveryStopped as exc:
                result, stopped = exc.result, exc
            frames.append(delivery_rows(result.outcomes, records, run_id, now))
            summary[target.name] = result.counts()
            if target.settled_by_snapshot and not config.dry_run:
                matched = result.outcomes.loc[result.outcomes["status"].isin(MATCHED)]
                unseen[target.name] = unseen_by_snapshot(
                    warehouse.database, target.name, matched["key"].tolist()
                )
            planned[target.name] = [asdict(p) for p in result.planned]
            if not config.dry_run:
                events += _delivery_events(target, result.outcomes)
            if stopped is not None:
                break
        requests = client.attempts()
        by_kind = client.requests_by_kind()
    rows = (
        pd.concat(frames)
        if frames
        else delivery_rows(pd.DataFrame(columns=DELIVERY_COLUMNS), pd.DataFrame(), run_id, now)
    )
    counts = record_events(context, events, asset="planhat/deliveries", database=warehouse.database)
    if stopped is not None:
        raise dg.Failure(str(stopped), allow_retries=False)
    total = sum(sum(c.values()) for c in summary.values())
    failed = sum(sum(c.get(s, 0) for s in FAILED) for c in summary.values())
    statuses: dict[str, int] = {}
    for target_counts in summary.values():
        for status, n in target_counts.items():
            statuses[status] = statuses.get(status, 0) + n
    samples = {
        t: [json.loads(json.dumps(p["body"], default=str)) for p in plans[:3]]
        for t, plans in planned.items()
    }
    # the table as written; a dry run's rows otherwise
    columns = deliveries.table_column_schema(warehouse.database, "planhat", "deliveries")
    return dg.MaterializeResult(
        metadata={
            **(columns or frame_column_schema(rows, deliveries.DELIVERIES)),
            "sent": dg.MetadataValue.int(0 if config.dry_run else total),
            "would_send": dg.MetadataValue.int(total if config.dry_run else 0),
            "created": dg.MetadataValue.int(statuses.get("created", 0)),
            "updated": dg.MetadataValue.int(statuses.get("updated", 0)),
            "unchanged": dg.MetadataValue.int(statuses.get("unchanged", 0)),
            "failed": dg.MetadataValue.int(failed),
            "requests": dg.MetadataValue.int(requests),
            "requests_by_kind": dg.MetadataValue.json(by_kind),
            "by_target": dg.MetadataValue.json(summary),
            "not_in_snapshot": dg.MetadataValue.json(unseen),
            "dry_run": dg.MetadataValue.bool(config.dry_run),
            "planned_requests": dg.MetadataValue.json({t: len(p) for t, p in planned.items()}),
            "samples": dg.MetadataValue.json(samples if config.dry_run else {}),
            "analytics": dg.MetadataValue.json(_analytics(rows, targets)),
            "sync_log": dg.MetadataValue.json(counts),
        }
    )


def _analytics(
    deliveries: pd.DataFrame, targets: Sequence[DeliveryTarget]
) -> dict[str, dict[str, int]]:
    """Planhat's analytics answers: ``processed`` (accepted) and ``errors`` per endpoint."""
    found = {}
    for target in (t.name for t in targets if t.host == "analytics"):
        rows = deliveries[deliveries["target"] == target]
        if len(rows):
            found[target] = {
                "processed": int(rows["status"].isin(["sent", "created", "updated"]).sum()),
                "errors": int((rows["status"] == "error").sum()),
            }
    return found


def _delivery_events(target: DeliveryTarget, outcomes: pd.DataFrame) -> list[SyncEvent]:
    kind = target.event_kind
    # the two names are checked once; each outcome's event is then built without validation
    # (a first load's hundred thousand validations cost a second). Three columns zipped: a row
    # tuple of every column (answers included) cost another.
    error = SyncEvent(event=f"outgoing.{kind}.error").event
    success = SyncEvent(event=f"outgoing.{kind}.success").event
    events = []
    for status, key, reason in zip(
        outcomes["status"], outcomes["key"], outcomes["error"], strict=True
    ):
        if status in FAILED:
            name = error
        elif status not in ("dry_run", "pending"):
            name, reason = success, status
        else:
            continue
        events.append(
            SyncEvent.model_construct(
                event=name,
                object_type=target.name,
                object_id=None if key is None or pd.isna(key) else str(key),
                reason=None if pd.isna(reason) else str(reason),
                details={},
            )
        )
    return events
