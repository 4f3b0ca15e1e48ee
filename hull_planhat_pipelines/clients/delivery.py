"""Delivering payload records to Planhat: one outcome row per record, never a guess.

``deliver`` cuts records into batches, sends them one after another (Planhat asks for
sequential bulk writes) and reports, per record, what Planhat did with it. A record is reported
delivered only when the response accounts for it; a failed batch is reported and the next one
still goes out; an auth failure stops everything (every later call would fail the same way).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from functools import partial
from itertools import pairwise
from typing import Any

import numpy as np
import pandas as pd

from hull_planhat_pipelines.clients.http import ApiAuthError, ApiError
from hull_planhat_pipelines.clients.planhat import PlanhatClient, render_path
from hull_planhat_pipelines.clients.planhat_outcomes import DELIVERED
from hull_planhat_pipelines.clients.planhat_targets import (
    PLANHAT_TARGETS,
    DeliveryTarget,
    Route,
    configured_target,
)
from hull_planhat_pipelines.sync.batching import (
    batch_bounds,
    check_batch_size,
    is_missing,
    json_size,
    record_payloads,
    split_by_size,
)

__all__ = [
    "FAILED",
    "OUTCOME_COLUMNS",
    "PLANHAT_TARGETS",
    "DeliveryResult",
    "DeliveryStopped",
    "DeliveryTarget",
    "PlannedRequest",
    "RequestRows",
    "configured_target",
    "deliver",
]

OUTCOME_COLUMNS = [
    "target",
    "key",
    "status",
    "error",
    "response",
    "request",
    "attempts",
    "batch",
    "planhat_id",
]
"""One row per record. ``request`` numbers the calls of this delivery (None: nothing sent);
``attempts`` counts HTTP tries of that call, retries included."""
EXCERPT_CHARS = 500
NO_ADDRESS = "no external id to address the record"
NOT_SENT_AUTH = "not sent: the delivery stopped on an authentication failure"
NOT_SENT_ORDER = "not sent: a record it must follow was not delivered"
FAILED = ("error", "ignored", "unknown", "unconfirmed", "dropped")
"""Statuses of records that did not (or may not) reach Planhat: they fail the delivery check.
``unknown``: the call went out and no answer came back."""


@dataclass(frozen=True)
class PlannedRequest:
    """What a dry run would have sent (the analytics path shows no tenant token)."""

    batch: int
    method: str
    path: str
    records: int
    body: Any


@dataclass
class DeliveryResult:
    """The outcome rows (indexed like the input records) and what it took to get them."""

    target: str
    outcomes: pd.DataFrame
    requests: int = 0
    attempts: int = 0
    dry_run: bool = False
    planned: list[PlannedRequest] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.outcomes["status"].value_counts().items()}

    @property
    def delivered(self) -> pd.DataFrame:
        """Records Planhat accounted for: their fingerprints may advance."""
        return self.outcomes[self.outcomes["status"].isin(DELIVERED)]

    @property
    def failed(self) -> pd.DataFrame:
        return self.outcomes[self.outcomes["status"].isin(FAILED)]


class DeliveryStopped(ApiAuthError):
    """An auth failure stopped a delivery; ``result`` holds what was done before it."""

    def __init__(self, cause: ApiAuthError, result: DeliveryResult) -> None:
        message = str(cause).removeprefix(f"{cause.api}: ")
        super().__init__(cause.api, message, cause.status, cause.body)
        self.result = result


COUNT_COLUMNS = frozenset({"request", "attempts", "batch"})
"""Outcome columns of nullable integers (``Int64``); the others hold objects."""


class _Rows:
    """Outcome columns filled by record position (lists, not a growing DataFrame)."""

    def __init__(self, target: str, keys: list[Any]) -> None:
        self.keys = keys
        self.columns: dict[str, list[Any]] = {name: [None] * len(keys) for name in OUTCOME_COLUMNS}
        self.columns["target"] = [target] * len(keys)
        self.columns["key"] = list(keys)

    def add(
        self,
        position: int,
        status: str,
        *,
        error: str | None = None,
        response: str | None = None,
        request: int | None = None,
        attempts: int | None = None,
        batch: int,
        planhat_id: str | None = None,
    ) -> None:
        values = {
            "status": status,
            "error": error,
            "response": response,
            "request": request,
            "attempts": attempts,
            "batch": batch,
            "planhat_id": planhat_id,
        }
        for name, value in values.items():
            self.columns[name][position] = value

    def frame(self, index: pd.Index, positions: range | None = None) -> pd.DataFrame:
        """The rows as a frame labelled by ``index``; ``positions``: only those rows (a
        batch's checkpoint: framing every row after each batch made a one-record
        destination quadratic in its records)."""
        part = slice(None) if positions is None else slice(positions.start, positions.stop)
        data: dict[str, Any] = {}
        for name in OUTCOME_COLUMNS:
            values = self.columns[name][part]
            if name in COUNT_COLUMNS:
                data[name] = pd.array(values, dtype="Int64")
            else:  # built typed, not converted afterwards: a frame a request must stay cheap
                data[name] = np.empty(len(values), dtype=object)
                data[name][:] = values
        return pd.DataFrame(data, index=index[part], columns=list(OUTCOME_COLUMNS), copy=False)


def _excerpt(client: PlanhatClient, value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = client.redact(text)
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"


def _record_key(value: Any) -> str | None:
    return None if is_missing(value) else str(value)


@dataclass(frozen=True)
class RequestRows:
    """The rows of one request's records (by position), framed only when read.

    A one-record target makes a request per record: a frame per request (0.3 ms) cost about as
    much as the request to a local server. A journal that holds outcomes until its group ends
    frames the group once (``frame(group)``), and one whose intent covers the records already
    frames nothing."""

    positions: range
    build: Callable[[range], pd.DataFrame]

    def __len__(self) -> int:
        return len(self.positions)

    def frame(self, positions: range | None = None) -> pd.DataFrame:
        """These rows as a frame; ``positions``: other rows of the same delivery instead."""
        return self.build(self.positions if positions is None else positions)


Checkpoint = Callable[[RequestRows], None]
"""Called with the outcome rows of each request (framed indexed like the input records) as soon
as its answer is read, before the next request goes out and before any error is raised: what a
request delivered is committed before anything else can happen. Rows handed over stay as they
are: a later frame of them reads the same values."""
Intent = Callable[[RequestRows], None]
"""Called with ``pending`` rows (framed indexed by position) just before a request that may not
be repeated blindly goes out (a POST that creates a record, an analytics post): a crash during
it leaves the records marked in doubt."""

ROUTE_COLUMNS = ("method", "path", "read_back")
"""Optional record columns of a one-record target: this record's call, and a path to GET
first (the record may exist already: an earlier call's outcome is unknown)."""


def deliver(
    records: pd.DataFrame,
    target: DeliveryTarget,
    client: PlanhatClient,
    *,
    batch_size: int,
    key_column: str | None = None,
    dry_run: bool = False,
    checkpoint: Checkpoint | None = None,
    intent: Intent | None = None,
    max_bytes: int | None = None,
    order_column: str | None = None,
    waits_column: str | None = None,
    undelivered_keys: Collection[str] = (),
) -> DeliveryResult:
    """Send ``records`` to ``target`` in batches of ``batch_size``, one request at a time.

    Returns one outcome row per record (see ``OUTCOME_COLUMNS``), in input order, and hands
    each request's rows to ``checkpoint`` as soon as they are known. An ``ApiAuthError`` stops
    the delivery and is raised as ``DeliveryStopped`` carrying the rows so far (the failed and
    unsent records checkpointed first); any other ``ApiError`` marks its batch's records as
    errors (``unknown`` when the call may have been applied and may not be repeated) and the
    next batch goes out. A target with ``max_bytes`` (analytics) has its batches also cut below
    that many bytes of JSON (``max_bytes`` here overrides it). ``key_column`` defaults to the
    target's ``key``. ``dry_run`` sends nothing and lists the would-be requests in ``planned``.
    ``order_column`` (ascending in ``records``): no request mixes two of its values, so a record
    goes only after every record of a lower one was answered; when one of those was not
    delivered, the records of higher orders are not sent (an error, sent again by the next run).
    ``waits_column`` (per record, the keys of the records it follows): only those not
    delivered hold a record back, the others of its order go (in as many requests as the
    held ones split them into); ``undelivered_keys``: records held back before this delivery
    (not among ``records``, not delivered), which hold their followers back too.
    """
    key_column = key_column or target.key
    check_batch_size(batch_size, target.max_batch)
    if waits_column is not None and order_column is None:
        raise ValueError("a waits column needs an order column")
    for column in (key_column, target.payload_column, order_column, waits_column):
        if column is not None and column not in records.columns:
            raise ValueError(f"column {column!r} is not among the record columns")
    payloads = record_payloads(
        records,
        payload_column=target.payload_column,
        key_column=key_column,
        exclude=(*target.exclude, *(c for c in ROUTE_COLUMNS if target.payload_column is None)),
    )
    keys = [_record_key(value) for value in records[key_column].tolist()]
    routes = _routes(records, target)
    rows = _Rows(target.name, keys)
    result = DeliveryResult(target.name, pd.DataFrame(columns=OUTCOME_COLUMNS), dry_run=dry_run)
    orders = records[order_column].tolist() if order_column is not None else None
    waits = (
        [[str(k) for k in w] if isinstance(w, list | tuple) else [] for w in records[waits_column]]
        if waits_column is not None
        else None
    )
    holds = _OrderHolds(orders, waits, keys, set(undelivered_keys))
    if orders is not None and any(b < a for a, b in pairwise(orders)):
        raise ValueError(f"records are not in ascending {order_column!r} order")
    bounds = _ordered_bounds(orders, len(records), batch_size, target.max_batch)
    limit = max_bytes or target.max_bytes
    if limit is not None:
        bounds = split_by_size(bounds, [json_size(item) for item in payloads], limit)
    batch_of = {p: n for n, bound in enumerate(bounds, start=1) for p in bound}
    framed = partial(rows.frame, records.index)  # one builder: a journal joins its requests
    for batch, positions in enumerate(bounds, start=1):
        if dry_run:
            items = payloads[positions.start : positions.stop]
            _plan(result, rows, target, batch, positions, items, keys, routes)
            continue
        held = holds.held(positions)
        for position in held:
            rows.add(position, "error", error=NOT_SENT_ORDER, batch=batch)
        holds.answered(held, rows.columns["status"])
        if checkpoint is not None:
            for run in _runs(positions, held, True):
                checkpoint(RequestRows(run, framed))
        for run in _runs(positions, held, False):
            items = payloads[run.start : run.stop]
            try:
                _send_batch(result, rows, client, target, batch, run, items, keys, routes, intent)
            except ApiAuthError as exc:
                for position in range(run.start, len(payloads)):
                    if rows.columns["status"][position] is None:
                        rows.add(position, "error", error=NOT_SENT_AUTH, batch=batch_of[position])
                result.outcomes = rows.frame(records.index)
                if checkpoint is not None:  # the held rows were handed over already
                    for rest in _runs(range(run.start, len(payloads)), held, False):
                        checkpoint(RequestRows(rest, framed))
                raise DeliveryStopped(exc, result) from None
            if checkpoint is not None:
                checkpoint(RequestRows(run, framed))
            holds.answered(run, rows.columns["status"])
    result.outcomes = rows.frame(records.index)
    return result


class _OrderHolds:
    """Which records of a request may not go yet: those following a record not delivered.

    With ``waits`` (per record, the keys it follows), a record is held when one of those was
    not delivered (in this delivery, or ``undelivered`` before it); without, every record of
    an order above the lowest one with a record not delivered is."""

    def __init__(
        self,
        orders: list[Any] | None,
        waits: list[list[str]] | None,
        keys: list[str | None],
        undelivered: set[str],
    ) -> None:
        self.orders, self.waits, self.keys = orders, waits, keys
        self.undelivered = undelivered
        self.failed_order: Any = None

    def held(self, positions: range) -> list[int]:
        if self.orders is None:
            return []
        if self.waits is not None:
            return [p for p in positions if any(k in self.undelivered for k in self.waits[p])]
        if self.failed_order is not None and self.orders[positions.start] > self.failed_order:
            return list(positions)
        return []

    def answered(self, positions: Iterable[int], statuses: list[Any]) -> None:
        """Note the records of ``positions`` not delivered."""
        if self.orders is None:
            return
        for position in positions:
            if statuses[position] in DELIVERED:
                continue
            key = self.keys[position]
            if self.waits is not None and key is not None:
                self.undelivered.add(key)
            elif self.failed_order is None or self.orders[position] < self.failed_order:
                self.failed_order = self.orders[position]


def _runs(positions: range, marked: Collection[int], want: bool) -> list[range]:
    """The maximal runs of ``positions`` that are (``want``) or are not in ``marked``."""
    marks = set(marked)
    runs: list[range] = []
    start = None
    for position in [*positions, positions.stop]:
        inside = position < positions.stop and (position in marks) == want
        if inside and start is None:
            start = position
        elif not inside and start is not None:
            runs.append(range(start, position))
            start = None
    return runs


def _ordered_bounds(
    orders: list[Any] | None, total: int, batch_size: int, max_batch: int
) -> list[range]:
    """``batch_bounds`` within each run of equal ``orders`` (one per record, ascending; None:
    one run)."""
    if not orders:
        return batch_bounds(total, batch_size, max_batch)
    bounds: list[range] = []
    start = 0
    for position in range(1, len(orders) + 1):
        if position == len(orders) or orders[position] != orders[start]:
            bounds += [
                range(start + b.start, start + b.stop)
                for b in batch_bounds(position - start, batch_size, max_batch)
            ]
            start = position
    return bounds


def _routes(records: pd.DataFrame, target: DeliveryTarget) -> list[Route] | None:
    """Per-record (method, path, read-back path) of a one-record target, when given."""
    if not target.one_record or "path" not in records.columns:
        return None
    methods = records["method"] if "method" in records.columns else [target.method] * len(records)
    backs = records["read_back"] if "read_back" in records.columns else [None] * len(records)
    return [
        (
            str(method) if not is_missing(method) else target.method,
            str(path) if not is_missing(path) else target.path,
            None if is_missing(back) else str(back),
        )
        for method, path, back in zip(methods, records["path"], backs, strict=True)
    ]


def _plan(
    result: DeliveryResult,
    rows: _Rows,
    target: DeliveryTarget,
    batch: int,
    positions: range,
    items: list[dict[str, Any]],
    keys: list[str | None],
    routes: list[Route] | None,
) -> None:
    key = keys[positions.start]
    if routes is None and _unaddressable(target, key):
        rows.add(positions.start, "error", error=NO_ADDRESS, batch=batch)
        return
    method, path = target.method, target.path
    if routes is not None:
        method, path, _ = routes[positions.start]
    elif target.one_record and key is not None:
        path = render_path(target.path, key)
    body: Any = items[0] if target.one_record else items
    result.planned.append(PlannedRequest(batch, method, path, len(items), body))
    for position in positions:
        rows.add(position, "dry_run", batch=batch)


def _unaddressable(target: DeliveryTarget, key: str | None) -> bool:
    return target.one_record and "{external_id}" in target.path and key is None


def _in_doubt_when_unanswered(target: DeliveryTarget, method: str) -> bool:
    """Calls that may not be repeated blindly: a create (POST) and the analytics posts."""
    if not target.repeatable:
        return True
    return target.one_record and method == "POST"


def _pending_frame(
    target: str, keys: list[str | None], batch: int, request: int, positions: range
) -> pd.DataFrame:
    """``pending`` rows of ``positions`` (indexed by position) before request ``request``: the
    batch's rows only (a row per record of the whole delivery per batch is quadratic)."""
    pending = _Rows(target, keys[positions.start : positions.stop])
    for offset in range(len(positions)):
        pending.add(offset, "pending", batch=batch, request=request)
    return pending.frame(pd.RangeIndex(positions.start, positions.stop))


def _send_batch(
    result: DeliveryResult,
    rows: _Rows,
    client: PlanhatClient,
    target: DeliveryTarget,
    batch: int,
    positions: range,
    items: list[dict[str, Any]],
    keys: list[str | None],
    routes: list[Route] | None,
    intent: Intent | None,
) -> None:
    """One request for one batch; its records' rows, whatever the outcome (auth aside)."""
    route = routes[positions.start] if routes is not None else None
    if route is None and _unaddressable(target, keys[positions.start]):
        rows.add(positions.start, "error", error=NO_ADDRESS, batch=batch)
        return
    before = client.attempts()
    method = route[0] if route is not None else target.method
    try:
        if route is not None and route[2] is not None:
            found = client.read(route[2])
            if found is not None and found.get("_id"):
                # An earlier create whose answer was lost did land: update it, never re-create.
                route = ("PUT", f"{target.path.rstrip('/')}/{found['_id']}", None)
                method = "PUT"
        if intent is not None and _in_doubt_when_unanswered(target, method):
            build = partial(_pending_frame, target.name, keys, batch, result.requests + 1)
            intent(RequestRows(positions, build))
        result.requests += 1
        request = result.requests
        outcomes, summary = target.send(client, target, items, keys[positions.start], route)
    except ApiAuthError:
        result.attempts += client.attempts() - before
        raise
    except ApiError as exc:
        attempts = client.attempts() - before
        result.attempts += attempts
        response = _excerpt(client, exc.body)
        unanswered = exc.ambiguous or (exc.status is not None and exc.status >= 500)
        in_doubt = unanswered and _in_doubt_when_unanswered(target, method)
        if exc.status is not None and exc.status >= 500 and not target.one_record:
            in_doubt = False  # an analytics 5xx answer: not applied, sent again next run
        for position in positions:
            rows.add(
                position,
                "unknown" if in_doubt else "error",
                error=client.redact(str(exc)),
                response=response,
                request=result.requests,
                attempts=attempts,
                batch=batch,
            )
        return
    attempts = client.attempts() - before
    result.attempts += attempts
    shared = _excerpt(client, summary)
    for outcome in outcomes:
        detail = _excerpt(client, outcome.detail) if outcome.detail is not None else shared
        rows.add(
            positions.start + outcome.index,
            outcome.status,
            error=outcome.error,
            response=detail,
            request=request,
            attempts=attempts,
            batch=batch,
            planhat_id=outcome.key,
        )
