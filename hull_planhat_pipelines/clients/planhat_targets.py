"""Planhat targets, declared: one entry says everything the delivery needs to know of a target.

A target is data: where its records go (path, method, host), which column keys them, how many
go in one call, how Planhat's answer becomes one outcome per record (``send``), whether a call
whose answer was lost may be sent again, and which payload table (its builder's asset) feeds
it. The delivery engine (``clients.delivery``) and the delivery asset read these fields and
have no branch per target: adding a target is adding a declaration to ``PLANHAT_TARGETS`` (plus
its payload builder when its records have a new shape).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from hull_planhat_pipelines.clients.planhat import PlanhatClient, RecordOutcome, render_path
from hull_planhat_pipelines.clients.planhat_outcomes import OutcomeStatus
from hull_planhat_pipelines.sync.batching import (
    MAX_ANALYTICS_BYTES,
    MAX_ANALYTICS_RECORDS,
    MAX_BULK_RECORDS,
)

Route = tuple[str, str, str | None]
"""A one-record call's own (method, path, read-back path), when its record carries one."""
Answer = tuple[Sequence[RecordOutcome], Any]
"""Outcomes by position in the batch, and the batch's summary (kept as the response excerpt)."""
Sender = Callable[
    [PlanhatClient, "DeliveryTarget", Sequence[dict[str, Any]], str | None, Route | None], Answer
]
"""Sends one batch to a target and reconciles the answer: ``(client, target, items, key of the
first item, route)`` -> outcomes. Raises ``ApiError`` when the call as a whole failed."""


@dataclass(frozen=True)
class DeliveryTarget:
    """One Planhat target: a declaration, not code."""

    name: str
    path: str
    send: Sender
    """How a batch is sent and its answer reconciled (``bulk_upsert``, ``one_record`` ...)."""
    method: str = "PUT"
    max_batch: int = MAX_BULK_RECORDS
    """The most records one call takes (Planhat's cap; the configured size may be smaller)."""
    key: str = "key"
    """The column of the records that keys them (outcomes, fingerprints, ``{external_id}``)."""
    host: Literal["rest", "analytics"] = "rest"
    """The REST API (under the calls-a-minute quota) or the analytics host (not)."""
    one_record: bool = False
    """One record per call: the body is an object, ``{external_id}`` in the path is filled with
    ``extid-<key>``, and a record may carry its own route (``ROUTE_COLUMNS``)."""
    repeatable: bool = True
    """A call whose answer was lost may be sent again (keyed upserts). False: it may have been
    applied and cannot be read back (analytics posts): its records are marked ``pending``
    before it goes out and ``unknown`` when no answer comes; they are never posted twice."""
    settled_by_snapshot: bool = False
    """Records the bulk answer did not name are settled against the next Planhat snapshot of
    the model; a delivery that created any of them, or left any in doubt, asks for that
    snapshot (one that only updated them does not: Planhat holds what was sent)."""
    max_bytes: int | None = None
    """Batches are cut further below this many bytes of JSON (the analytics body limit)."""
    payloads: str | None = None
    """The table of records to send, ``planhat.<payloads>``: the asset of its payload builder."""
    event_kind: str = "account"
    """The sync log's word for its records: ``outgoing.<event_kind>.success``."""
    headers: Mapping[str, str] = field(default_factory=dict)
    payload_column: str | None = "payload"
    """Column holding each record's body; None: the row itself minus key and ``exclude``."""
    exclude: tuple[str, ...] = ()


def bulk_upsert(
    client: PlanhatClient,
    target: DeliveryTarget,
    items: Sequence[dict[str, Any]],
    first_key: str | None,
    route: Route | None,
) -> Answer:
    """``PUT <collection>`` answered with Planhat's bulk counts: one outcome per item, matched
    by key. An answer without the counts is an error (nothing is assumed delivered)."""
    result = client.bulk_put(target.path, items, strict=True, headers=target.headers)
    return result.outcomes, result.summary


def bulk_put(
    client: PlanhatClient,
    target: DeliveryTarget,
    items: Sequence[dict[str, Any]],
    first_key: str | None,
    route: Route | None,
) -> Answer:
    """A configured bulk PUT: per-item outcomes when the answer has the bulk counts, every item
    "sent" when a 2xx answer has some other shape (a configured endpoint may answer anything)."""
    result = client.bulk_put(target.path, items, headers=target.headers)
    return result.outcomes, result.summary


def activities(
    client: PlanhatClient,
    target: DeliveryTarget,
    items: Sequence[dict[str, Any]],
    first_key: str | None,
    route: Route | None,
) -> Answer:
    """User activities: Planhat answers 200 whatever it keeps, so every item is only "sent"."""
    result = client.bulk_activities(items)
    return result.outcomes, result.summary


def dimension_data(
    client: PlanhatClient,
    target: DeliveryTarget,
    items: Sequence[dict[str, Any]],
    first_key: str | None,
    route: Route | None,
) -> Answer:
    """Metrics: per-item errors from the answer, the rest "sent" when ``processed`` counts them."""
    result = client.dimension_data(items)
    return result.outcomes, result.summary


def one_record(
    client: PlanhatClient,
    target: DeliveryTarget,
    items: Sequence[dict[str, Any]],
    first_key: str | None,
    route: Route | None,
) -> Answer:
    """One record per call to the target's path (or the record's own route): "sent", or
    "created"/"updated" when the route says which, with the ``_id`` Planhat answered."""
    method, path = target.method, target.path
    if route is not None:
        method, path = route[0], route[1]
    elif first_key is not None:
        path = render_path(target.path, first_key)
    kind = f"{method} {target.path}" + ("/{id}" if path != target.path else "")
    sent = client.send(method, path, items[0], target.headers, kind=kind)
    status: OutcomeStatus = "sent"
    if route is not None:
        status = "created" if method == "POST" else "updated"
    outcome = RecordOutcome(0, _response_id(sent.body), status)
    return [outcome], {"status": sent.status, "body": sent.body}


def _response_id(body: Any) -> str | None:
    return str(body["_id"]) if isinstance(body, Mapping) and body.get("_id") else None


COMPANIES = DeliveryTarget(
    "companies",
    "/companies",
    bulk_upsert,
    payloads="company_payloads",
    settled_by_snapshot=True,
)
ENDUSERS = DeliveryTarget(
    "endusers",
    "/endusers",
    bulk_upsert,
    payloads="enduser_payloads",
    settled_by_snapshot=True,
    event_kind="user",
)
ACTIVITIES = DeliveryTarget(
    "activities",
    "/analytics/bulk",
    activities,
    method="POST",
    max_batch=MAX_ANALYTICS_RECORDS,
    host="analytics",
    repeatable=False,
    max_bytes=MAX_ANALYTICS_BYTES,
    payloads="activity_payloads",
    event_kind="event",
)
METRICS = DeliveryTarget(
    "metrics",
    "/dimensiondata",
    dimension_data,
    method="POST",
    max_batch=MAX_ANALYTICS_RECORDS,
    host="analytics",
    repeatable=False,
    max_bytes=MAX_ANALYTICS_BYTES,
    payloads="metric_payloads",
)
PLANHAT_TARGETS: tuple[DeliveryTarget, ...] = (COMPANIES, ENDUSERS, ACTIVITIES, METRICS)
"""The targets ``planhat/deliveries`` sends, in this order: companies before endusers (an
enduser names its company)."""


def configured_target(
    name: str,
    method: str,
    path: str,
    *,
    headers: Mapping[str, str] | None = None,
    payload_column: str | None = "payload",
    exclude: Sequence[str] = (),
) -> DeliveryTarget:
    """A configured endpoint: a PUT to a collection path is a bulk write, anything else takes
    one record per call (``{external_id}`` in the path addresses it)."""
    bulk = method == "PUT" and "{" not in path
    return DeliveryTarget(
        name,
        path,
        bulk_put if bulk else one_record,
        method=method,
        max_batch=MAX_BULK_RECORDS if bulk else 1,
        one_record=not bulk,
        event_kind="event",
        headers=dict(headers or {}),
        payload_column=payload_column,
        exclude=tuple(exclude),
    )
