"""Report sync events both as Dagster log lines and as rows of ``ops.sync_log``.

The asset-layer half of event recording: ``sync.log`` defines the events (pure), the warehouse
layer writes the rows (``append_sync_log``); this module, the only one that needs a Dagster
context, logs them to the run and hands them to the warehouse.
"""

import collections
from collections.abc import Sequence

import dagster as dg

from hull_planhat_pipelines.sync.log import SyncEvent, events_frame
from hull_planhat_pipelines.warehouse import append_sync_log


def record_events(
    context: dg.AssetExecutionContext | dg.OpExecutionContext,
    events: Sequence[SyncEvent],
    *,
    asset: str,
) -> dict[str, int]:
    """Store every event as its own ``ops.sync_log`` row; log one line per (event, reason)
    with its count (a single event is logged whole); return counts by event name.

    A first load logs a row per record: the table is where one record's story is found
    (``where object_id = ...``), the run log says what happened and how often.
    """
    groups: dict[tuple[str, str | None], list[SyncEvent]] = collections.defaultdict(list)
    for event in events:
        groups[(event.event, event.reason)].append(event)
    for (name, reason), group in groups.items():
        log = getattr(context.log, group[0].level)
        if len(group) == 1:
            log(group[0].message())
        else:
            log(f"{name}{f' {reason}' if reason else ''}: {len(group)} (see ops.sync_log)")
    append_sync_log(events_frame(events, run_id=context.run.run_id, asset=asset))
    return dict(collections.Counter(event.event for event in events))
