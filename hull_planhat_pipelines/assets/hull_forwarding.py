"""Forwarding the outbox of applied changes to a Hull firehose, batch by batch.

The outbox (``hull.firehose_outbox``) is filled in the transaction that applies a sync; here it
drains in order, one firehose batch at a time, each read just before it is sent: after each
batch the firehose took, its rows leave the outbox in a short transaction of their own (a
checkpoint), so a run killed midway resends at most one batch, which is harmless (traits are
idempotent, a track is keyed by its event_id). No warehouse connection is held while a request
or its backoff is under way (see ``warehouse.outbox``).

A refused batch stays queued for the next run; later messages about the same record wait behind
it, so a record's changes never arrive out of order. A firehose that is down (5xx or timeouts
after the retries) or refuses the credentials ends the forwarding of this run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import dagster as dg
from pydantic import Field

from hull_planhat_pipelines.clients.http import ApiAuthError
from hull_planhat_pipelines.clients.hull import FirehoseMessage, HullFirehoseClient
from hull_planhat_pipelines.sync.log import SyncEvent
from hull_planhat_pipelines.warehouse import outbox

FORWARDED_CHECK = dg.AssetCheckSpec(
    "hull_firehose_forwarded",
    asset=dg.AssetKey(["hull", "users"]),
    description="Every queued change reached the Hull firehose (passes when forwarding is off).",
)
HELD = "held back: an earlier message about the same record is still queued"


class Firehose(Protocol):
    """Where forwarding goes: ``HullFirehoseResource`` (tests pass one with a fake clock)."""

    @property
    def enabled(self) -> bool: ...

    def client(self) -> HullFirehoseClient: ...


@dataclass
class Forwarded:
    """What one forwarding did; ``ok`` is False when anything queued could not be delivered."""

    enabled: bool = False
    dry_run: bool = False
    pending: int = 0
    sent: int = 0
    failed: int = 0
    held: int = 0
    requests: int = 0
    stopped: str | None = None
    by_kind: dict[str, int] = field(default_factory=dict)
    events: list[SyncEvent] = field(default_factory=list)

    @property
    def left(self) -> int:
        """Messages still in the outbox after this run."""
        return self.pending - self.sent

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.stopped is None and (self.dry_run or self.left == 0)

    def metadata(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "dry_run": self.dry_run,
            "pending": self.pending,
            "sent": self.sent,
            "failed": self.failed,
            "held": self.held,
            "left": self.left,
            "requests": self.requests,
            "stopped": self.stopped,
            "by_kind": self.by_kind,
        }


def message(client: HullFirehoseClient, row: Any) -> FirehoseMessage:
    """The firehose message of one outbox row."""
    user = json.loads(row.user_claims) if row.user_claims else None
    account = json.loads(row.account_claims) if row.account_claims else None
    body = json.loads(row.body)
    key = row.message_key
    if row.kind == "user_traits":
        return client.user_traits_message(user, body, key=key)
    if row.kind == "account_traits":
        return client.account_traits_message(account, body, key=key)
    if row.kind == "link":
        return client.link_message(user, account, key=key)
    if row.kind == "track":
        return client.track_message(
            user,
            body["event_id"],
            body["name"],
            body["properties"],
            body["occurred_at"],
            source=body.get("source"),
            key=key,
        )
    raise ValueError(f"unknown outbox message kind {row.kind!r}")


def _error(key: str | None, reason: str | None) -> SyncEvent:
    return SyncEvent(
        event="incoming.job.error", object_type="firehose", object_id=key, reason=reason
    )


def forward(database: str, firehose: Firehose, *, dry_run: bool = False) -> Forwarded:
    """Drain the outbox in order, one checkpointed batch at a time; a dry run sends nothing.

    Each batch is read in a connection of its own, closed before the batch goes out, and its
    outcome is recorded in another: no connection is held across a request or its backoff."""
    if not firehose.enabled:
        return Forwarded()
    kinds = outbox.counts_by_kind(database)
    result = Forwarded(enabled=True, dry_run=dry_run, pending=sum(kinds.values()), by_kind=kinds)
    if not result.pending or dry_run:
        return result
    with firehose.client() as client:
        held: set[str] = set()
        _drain(database, client, _queued(database, client, held, result), held, result)
        result.requests = client.attempts()
    return result


Queued = tuple[int, str, FirehoseMessage]


def _queued(
    database: str, client: HullFirehoseClient, held: set[str], result: Forwarded
) -> Iterator[Queued]:
    """The outbox's messages in order, read a batch's worth at a time; a row that cannot
    become a message stays queued, reported, and holds back its record's later messages."""
    after: int | None = None
    while True:
        rows = outbox.page(database, after, client.batch_size)
        for row in rows.itertuples(index=False):
            after = int(row.seq)
            try:
                yield after, row.message_key, message(client, row)
            except (ValueError, KeyError, TypeError) as exc:
                result.failed += 1
                held.add(row.message_key)
                result.events.append(_error(row.message_key, f"cannot build message: {exc}"))
        if len(rows) < client.batch_size:
            return


def _drain(
    database: str,
    client: HullFirehoseClient,
    queued: Iterator[Queued],
    held: set[str],
    result: Forwarded,
) -> None:
    number = 0
    exhausted = False
    while not exhausted:
        batch: list[Queued] = []
        while len(batch) < client.batch_size:
            item = next(queued, None)
            if item is None:
                exhausted = True
                break
            if item[1] in held:
                result.held += 1
                result.events.append(
                    SyncEvent(
                        event="incoming.job.skip",
                        object_type="firehose",
                        object_id=item[1],
                        reason=HELD,
                    )
                )
            else:
                batch.append(item)
        if not batch:
            return
        number += 1
        try:
            sent = client.send_batch([m for _, _, m in batch], number)
        except ApiAuthError as exc:
            result.stopped = client.redact(str(exc))
            result.events.append(_error(None, f"Unauthorized (firehose): {result.stopped}"))
            return
        if sent.delivered:
            outbox.checkpoint(database, [seq for seq, _, _ in batch])
            result.sent += len(batch)
            continue
        result.failed += len(batch)
        held.update(key for _, key, _ in batch)
        result.events.extend(_error(o.key, o.error) for o in sent.outcomes)
        if not sent.reachable:
            result.stopped = "the firehose is unavailable; the rest waits for the next run"
            return


class HullProfilesConfig(dg.Config):
    """Run configuration of ``hull_profiles``."""

    dry_run: bool = Field(
        default=False,
        description="Apply the sync to the profile store but send nothing to the Hull "
        "firehose (changes stay queued for the next real run).",
    )


def forwarded_check(forwarded: Forwarded) -> dg.AssetCheckResult:
    """Failed (severity ERROR) when queued changes did not reach the firehose: the profiles are
    applied and the chain downstream runs, but the sync did not complete without errors."""
    if not forwarded.enabled:
        description = "forwarding to a Hull firehose is off"
    elif forwarded.dry_run:
        description = f"dry run: {forwarded.pending} message(s) stay queued, none sent"
    elif forwarded.ok:
        description = f"{forwarded.sent} message(s) delivered"
    else:
        description = (
            f"{forwarded.left} message(s) not delivered ({forwarded.failed} refused, "
            f"{forwarded.held} held back){'; ' + forwarded.stopped if forwarded.stopped else ''}"
        )
    return dg.AssetCheckResult(
        check_name=FORWARDED_CHECK.name,
        asset_key=FORWARDED_CHECK.asset_key,
        passed=forwarded.ok,
        severity=dg.AssetCheckSeverity.ERROR,
        description=description,
        metadata={"firehose": dg.MetadataValue.json(forwarded.metadata())},
    )
