"""What a configured destination reads before sending: its source SQL's rows and the delivery
state of its keys, on one read-only connection.

The asset decides what a missing table or a failing query means for the run; this module only
tells them apart (``SourceNotReady``, ``SourceFailed``).
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import pandas as pd

from hull_planhat_pipelines.settings import DestinationSettings
from hull_planhat_pipelines.sync.operator_sql import lock_down, run_select
from hull_planhat_pipelines.warehouse.connection import read_only
from hull_planhat_pipelines.warehouse.deliveries import (
    fingerprints_table,
    in_doubt_keys,
    planhat_ids,
)


class SourceNotReady(Exception):
    """The source SQL reads a table not materialized yet (first runs): the destination waits."""


class SourceFailed(Exception):
    """The source SQL failed for another reason: an operator error, not worth retrying."""


@dataclass(frozen=True)
class DestinationInputs:
    source: pd.DataFrame
    fingerprints: pd.DataFrame
    planhat_ids: dict[str, str]
    in_doubt: set[str]


def destination_inputs(database: str, destination: DestinationSettings) -> DestinationInputs | None:
    """The rows of ``destination.source_sql`` (run locked down: it reads the warehouse and
    nothing else) with the fingerprints, known Planhat ids and in-doubt keys of its target;
    ``None`` while the warehouse does not exist."""
    with read_only(database) as conn:
        if conn is None:
            return None
        try:
            source = run_select(lock_down(conn), destination.source_sql, destination.name)
        except duckdb.CatalogException as exc:
            raise SourceNotReady(str(exc)) from exc
        except duckdb.Error as exc:
            raise SourceFailed(str(exc)) from exc
        return DestinationInputs(
            source=source,
            fingerprints=fingerprints_table(conn, [destination.name]),
            planhat_ids=planhat_ids(conn, destination.name),
            in_doubt=in_doubt_keys(conn, destination.name),
        )
