"""Report sync events both as Dagster log lines and as rows of ``ops.sync_log``."""

import collections
from collections.abc import Sequence

import dagster as dg

from hull_planhat_pipelines.sync.log import SyncEvent, events_frame
from hull_planhat_pipelines.warehouse import append_sync_log

MAX_LOG_LINES_PER_EVENT = 50
"""Per event name and step; beyond that only the table has the rows (the UI stays readable)."""


def record_events(
    context: dg.AssetExecutionContext | dg.OpExecutionContext,
    events: Sequence[SyncEvent],
    *,
    asset: str,
) -> dict[str, int]:
    """Log each event under its stable name, store all of them, and return counts by name."""
    counts: collections.Counter[str] = collections.Counter()
    for event in events:
        counts[event.event] += 1
        if counts[event.event] <= MAX_LOG_LINES_PER_EVENT:
            getattr(context.log, event.level)(event.message())
    for name, count in counts.items():
        if count > MAX_LOG_LINES_PER_EVENT:
            context.log.info(f"{name}: {count} in all (see ops.sync_log)")
    append_sync_log(events_frame(events, run_id=context.run.run_id, asset=asset))
    return dict(counts)
