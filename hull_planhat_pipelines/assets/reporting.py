"""Report sync events both as Dagster log lines and as rows of ``ops.sync_log``.

The asset-layer half of event recording: ``sync.log`` defines the events (pure), the warehouse
layer writes the rows (``append_sync_log``); this module, the only one that needs a Dagster
context, logs them to the run and hands them to the warehouse.
"""

import collections
from collections.abc import Sequence

import dagster as dg
import pandas as pd

from hull_planhat_pipelines.clients.http import ApiAuthError, ApiError
from hull_planhat_pipelines.policies import retry_can_help
from hull_planhat_pipelines.sync.log import (
    SyncEvent,
    empty_log_rows,
    events_frame,
    level_of,
    log_row_message,
    log_rows_frame,
)
from hull_planhat_pipelines.warehouse import append_sync_log


def record_events(
    context: dg.AssetExecutionContext | dg.OpExecutionContext,
    events: Sequence[SyncEvent],
    *,
    asset: str,
    database: str,
    rows: pd.DataFrame | None = None,
) -> dict[str, int]:
    """Store every event as its own ``ops.sync_log`` row; log one line per (event, reason)
    with its count (a single event is logged whole); return counts by event name.

    ``database``: the warehouse the asset works on (its ``WarehouseResource``): the log lives
    beside the rows it speaks of, whatever the environment's default path.

    ``rows``: more events in bulk (``sync.log.LOG_ROW_COLUMNS``), as many as a first load has
    records. A first load logs a row per record: the table is where one record's story is
    found (``where object_id = ...``), the run log says what happened and how often.
    """
    rows = rows if rows is not None else empty_log_rows()
    counts: dict[tuple[str, str | None], int] = collections.Counter()
    first: dict[tuple[str, str | None], SyncEvent | pd.Series] = {}
    for event in events:
        key = (event.event, event.reason)
        counts[key] += 1
        first.setdefault(key, event)
    if len(rows):
        reasons = rows["reason"].astype(object).where(rows["reason"].notna(), None)
        grouped = rows.assign(reason=reasons).groupby(["event", "reason"], dropna=False, sort=False)
        for (name, reason), group in grouped:
            key = (str(name), None if pd.isna(reason) else str(reason))
            counts[key] += len(group)
            first.setdefault(key, group.iloc[0])
    for (name, reason), count in counts.items():
        log = getattr(context.log, level_of(name))
        if count == 1:
            one = first[(name, reason)]
            log(one.message() if isinstance(one, SyncEvent) else log_row_message(one))
        else:
            log(f"{name}{f' {reason}' if reason else ''}: {count} (see ops.sync_log)")
    run_id = context.run.run_id
    frames = [events_frame(events, run_id=run_id, asset=asset)]
    if len(rows):
        frames.append(log_rows_frame(rows, run_id=run_id, asset=asset))
    append_sync_log(
        pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0], database
    )
    by_event: dict[str, int] = collections.Counter()
    for (name, _), count in counts.items():
        by_event[name] += count
    return dict(by_event)


def fetch_failure(
    context: dg.AssetExecutionContext,
    exc: ApiError,
    *,
    asset: str,
    object_type: str,
    database: str,
) -> dg.Failure | None:
    """Log a source fetch's API error as ``incoming.job.error`` (refused credentials as
    "Unauthorized", anything else by the client's message, which never holds a credential).
    A refusal gets the ``Failure`` that ends the step for good; an outage gets ``None``, for
    the caller to raise the error as it came, so that the step retry tries again."""
    reason = "Unauthorized" if isinstance(exc, ApiAuthError) else str(exc)
    record_events(
        context,
        [SyncEvent(event="incoming.job.error", object_type=object_type, reason=reason)],
        asset=asset,
        database=database,
    )
    if retry_can_help(exc):
        return None
    return dg.Failure(str(exc), allow_retries=False)
