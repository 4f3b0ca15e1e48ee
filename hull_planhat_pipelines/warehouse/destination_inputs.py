"""What a configured destination reads before sending: its source SQL's rows (the ones the
memo cannot vouch for, ``destination_memo``) and the delivery state of the keys they map to.

The asset decides what a missing table or a failing query means for the run; this module only
tells them apart (``SourceNotReady``, ``SourceFailed``).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import duckdb
import pandas as pd

from hull_planhat_pipelines.settings import DestinationSettings
from hull_planhat_pipelines.sync.operator_sql import lock_down, run_select
from hull_planhat_pipelines.sync.planhat.destinations import SOURCE_HASH
from hull_planhat_pipelines.warehouse.attachments import drop_cached_blocks
from hull_planhat_pipelines.warehouse.connection import read_only
from hull_planhat_pipelines.warehouse.deliveries import (
    fingerprints_of_keys,
    in_doubt_keys,
    planhat_ids,
)
from hull_planhat_pipelines.warehouse.destination_memo import (
    GROUP,
    every_row,
    memo_ready,
    rememberable,
    row_groups,
    rows_of_groups,
    source_columns,
    source_digest,
    vouched_hashes,
)


class SourceNotReady(Exception):
    """The source SQL reads a table not materialized yet (first runs): the destination waits."""


class SourceFailed(Exception):
    """The source SQL failed for another reason: an operator error, not worth retrying."""


@dataclass(frozen=True)
class DestinationInputs:
    source: pd.DataFrame
    """The rows to map: all of the source SQL's, or (``remembered``) the ones the memo cannot
    vouch for; each with its ``SOURCE_HASH``."""
    rows: int
    """How many rows the source SQL returned in all."""
    remembered: bool
    """Rows the memo vouches for were left out (``destination_memo``)."""


@dataclass(frozen=True)
class DeliveryState:
    fingerprints: pd.DataFrame
    planhat_ids: dict[str, str]
    in_doubt: set[str]


def destination_inputs(
    database: str, destination: DestinationSettings, *, every_row_asked: bool = False
) -> DestinationInputs | None:
    """The rows of ``destination.source_sql`` (run locked down: it reads the warehouse and
    nothing else) that may map to something other than what Planhat was sent, and the keys of
    its target in doubt; ``None`` while the warehouse does not exist. ``every_row_asked``: all
    rows (a forced send, a test send)."""
    with read_only(database) as conn:
        if conn is None:
            return None
        sql = destination.source_sql
        remembered = began = False
        try:
            memo = not every_row_asked and memo_ready(conn)
            if memo:
                conn.execute("begin transaction")  # the memo and the source, in one snapshot
                began = True
            # the memo's hashes first, and their blocks let go before the lock down: read
            # after the source, they were cached beside every block the source had read
            vouched = _vouched(conn, destination) if memo else set()
            drop_cached_blocks(conn)
            locked = lock_down(conn)
            columns = source_columns(locked, sql)
            names = [name for name, _ in columns]
            digest = source_digest(destination, columns)
            if not rememberable(columns):
                source = run_select(locked, sql, destination.name)
                rows = len(source)
            elif not memo:
                query = every_row(sql, destination, names)
                source = run_select(locked, query, destination.name, [digest])
                rows = len(source)
            else:
                remembered = True
                source, rows = _unvouched_rows(locked, sql, destination, names, digest, vouched)
        except duckdb.CatalogException as exc:
            raise SourceNotReady(str(exc)) from exc
        except duckdb.Error as exc:
            raise SourceFailed(str(exc)) from exc
        finally:
            if began:
                conn.execute("rollback")  # it read, and wrote nothing
        return DestinationInputs(
            source=source,
            rows=int(rows),
            remembered=remembered,
        )


def _vouched(conn: duckdb.DuckDBPyConnection, destination: DestinationSettings) -> set[str]:
    """The row hashes the memo vouches for (``vouched_hashes``)."""
    return {h for (h,) in conn.execute(vouched_hashes(), [destination.name]).fetchall()}


def _unvouched_rows(
    conn: duckdb.DuckDBPyConnection,
    sql: str,
    destination: DestinationSettings,
    names: list[str],
    digest: str,
    vouched: set[str],
) -> tuple[pd.DataFrame, int]:
    """The rows the memo cannot vouch for (``vouched``, read in the caller's transaction), and
    how many rows the source returned in all: keys and hashes first, then the rows of the keys
    that may have changed."""
    groups = run_select(conn, row_groups(sql, destination, names), destination.name, [digest])
    unvouched = groups.loc[~groups[SOURCE_HASH].isin(vouched), GROUP].unique().tolist()
    if unvouched:
        query = rows_of_groups(sql, destination, names)
        params = [digest, unvouched, destination.name]
    else:
        query, params = f"{every_row(sql, destination, names)} limit 0", [digest]
    return run_select(conn, query, destination.name, params), len(groups)


def delivery_state(database: str, target: str, keys: Collection[str]) -> DeliveryState:
    """What was last delivered to ``target`` under ``keys``: fingerprints, Planhat ids and the
    keys in doubt (read for ``keys`` only: every create is journaled as an intent first, so
    all keys ever sent would otherwise be read)."""
    with read_only(database) as conn:
        fingerprints = fingerprints_of_keys(conn, target, keys)
        return DeliveryState(
            fingerprints, planhat_ids(conn, target, keys), in_doubt_keys(conn, target, keys)
        )
