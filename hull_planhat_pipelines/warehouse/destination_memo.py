"""What each row of a destination's source last mapped to, so a run maps only the rows that
changed.

A destination's SQL returns every row each run (22,471 notes at 100,000 people), and mapping
and fingerprinting them all costs the store, not the change. The memo keeps, per target and
key, the hash of the source row last mapped and the fingerprint it mapped to. A source row
whose hash the memo holds, for a key whose delivered fingerprint
(``planhat.delivery_fingerprints``) is that same fingerprint, maps to exactly what Planhat was
sent: it is dropped in SQL, before it is read. Every other row is mapped and compared as
before. The memo caches a pure function and never records a delivery: the fingerprints stay
the only record of what Planhat holds, so a stale or lost memo costs mapping, never a send.

A row's hash covers the text of each of its columns, the source's column names and types, the
destination's settings (its exclusions, path and keys change what a row maps to) and
``MAPPING_VERSION`` (raised when the mapping itself changes). The rows of one key stand or
fall together: ``map_rows`` keeps one row per key, so when any of them may have changed, all
of them are read, and the same row wins as when every row is read.

The source is read in two statements of one snapshot: its keys and hashes alone, then, when
some key may have changed, the rows of those keys. A single statement holding every row (with
every block of every column it read) until the memo's verdict would cost what the source
returns, not what changed.
"""

from __future__ import annotations

import duckdb
import pandas as pd

from hull_planhat_pipelines.settings import DestinationSettings
from hull_planhat_pipelines.sync.canonical import canonical_hash
from hull_planhat_pipelines.sync.operator_sql import as_subquery
from hull_planhat_pipelines.sync.planhat.destinations import KEY_COLUMNS, SOURCE_HASH
from hull_planhat_pipelines.warehouse.connection import (
    connect,
    quote,
    run,
    table_exists,
    transaction,
)
from hull_planhat_pipelines.warehouse.deliveries import FINGERPRINTS

MEMO = "ops.destination_source_memo"
MEMO_DDL = (
    "create schema if not exists ops",
    f"create table if not exists {MEMO} "
    "(target varchar, key varchar, source_hash varchar, fingerprint varchar)",
)
MAPPING_VERSION = "1"
"""Raised whenever what a row maps to changes for the same row and settings (``jsonable``,
``canonical_content``, ``fingerprint``, ``map_rows``): a test pins one row's fingerprint."""
ROW = "_destination_row"
KEY = "_destination_key"
GROUP = "_destination_group"
RESERVED = frozenset({ROW, KEY, GROUP, SOURCE_HASH})
"""Names the wrapping query uses: a source returning one of them is read whole, unremembered."""


def source_columns(conn: duckdb.DuckDBPyConnection, sql: str) -> list[tuple[str, str]]:
    """The source's column names and types (nothing is read)."""
    found = conn.execute(f"select * from ({as_subquery(sql)}\n) {ROW} limit 0").description
    return [(str(column[0]), str(column[1])) for column in found or []]


def rememberable(columns: list[tuple[str, str]]) -> bool:
    names = [name for name, _ in columns]
    return len(set(names)) == len(names) and not RESERVED & set(names)


def source_digest(destination: DestinationSettings, columns: list[tuple[str, str]]) -> str:
    """What, besides the row's values, decides what a row maps to: the destination's settings,
    the source's column names and types, and the mapping's version."""
    return canonical_hash([MAPPING_VERSION, destination.model_dump(mode="json"), columns])


def _key_sql(destination: DestinationSettings, names: list[str]) -> str:
    """The record's key as ``map_rows`` takes it (``_key``), to group the rows of one key:
    the external id a path needs, else the first key column with a value, else the row."""
    if "{external_id}" in destination.path:
        columns = ["external_id"] if "external_id" in names else []
    else:
        columns = [c for c in KEY_COLUMNS if c in names]
    values = [f"nullif(cast({ROW}.{quote(c)} as varchar), '')" for c in columns]
    return f"coalesce({', '.join([*values, 'null'])})"


def hashed_source(sql: str, destination: DestinationSettings, names: list[str]) -> str:
    """The source's rows with ``SOURCE_HASH`` (of the digest, the first parameter, and every
    column's text as written) and ``KEY``."""
    texts = ", ".join(f"cast({ROW}.{quote(n)} as varchar)" for n in names)
    hashed = f"md5(? || to_json([{texts}]::varchar[])::varchar)"
    return (
        f'select {ROW}.*, {hashed} as "{SOURCE_HASH}", {_key_sql(destination, names)} as {KEY}'
        f" from ({as_subquery(sql)}\n) {ROW}"
    )


def every_row(sql: str, destination: DestinationSettings, names: list[str]) -> str:
    """All of ``hashed_source`` (parameter: the digest)."""
    return f"select * exclude ({KEY}) from ({hashed_source(sql, destination, names)}) h"


def row_groups(sql: str, destination: DestinationSettings, names: list[str]) -> str:
    """Per source row, its group (``GROUP``: its key, else its hash) and ``SOURCE_HASH``: no
    other column is kept. Parameter: the digest."""
    return (
        f'select coalesce(h.{KEY}, h."{SOURCE_HASH}") as {GROUP}, h."{SOURCE_HASH}"'
        f" from ({hashed_source(sql, destination, names)}) h"
    )


def vouched_hashes() -> str:
    """The row hashes the memo vouches for: it holds the hash for a key whose delivered
    fingerprint is the one that hash mapped to. Parameter: the target."""
    return (
        f"select m.source_hash from {MEMO} m join {FINGERPRINTS} f on f.target = m.target"
        " and f.key = m.key and f.fingerprint = m.fingerprint where m.target = ?"
    )


def _vouched(hashed: str) -> str:
    """SQL: the memo vouches for the row aliased ``hashed`` (``vouched_hashes``). Parameter:
    the target."""
    return (
        f"exists (select 1 from ({vouched_hashes()}) v"
        f' where v.source_hash = {hashed}."{SOURCE_HASH}")'
    )


def rows_of_groups(sql: str, destination: DestinationSettings, names: list[str]) -> str:
    """The rows of ``hashed_source`` in the given groups (``row_groups``): every row of a key
    any of whose rows may have changed (``map_rows`` picks one row per key among all of
    them, as when every row is read), and any keyless row the memo cannot vouch for (its
    hash may differ from the first reading's: a column such as ``random()``). Parameters: the
    digest, the groups, the target."""
    return (
        f"select * exclude ({KEY}) from ({hashed_source(sql, destination, names)}) h"
        f' where coalesce(h.{KEY}, h."{SOURCE_HASH}") in (select unnest(?::varchar[]))'
        f" or (h.{KEY} is null and not {_vouched('h')})"
    )


def memo_ready(conn: duckdb.DuckDBPyConnection) -> bool:
    """The memo and the fingerprints exist: a run may leave out what they vouch for."""
    return table_exists(conn, *MEMO.split(".")) and table_exists(conn, *FINGERPRINTS.split("."))


def remember_mapped(database: str, target: str, mapped: pd.DataFrame, *, whole: bool) -> None:
    """Keep what the rows mapped this run mapped to: per key, the hash of each of its rows
    (``SOURCE_HASH``, a list) and the key's fingerprint.

    ``whole``: the run mapped every row of the source, so the target's memo is replaced (keys
    gone from the source leave it); otherwise the mapped keys' entries are replaced."""
    if SOURCE_HASH not in mapped.columns:
        return  # a source read whole, unremembered (``rememberable``)
    rows = mapped[["key", "fingerprint", SOURCE_HASH]].explode(SOURCE_HASH)
    rows = rows.loc[rows[SOURCE_HASH].notna()]
    if rows.empty and not whole:
        return
    conn = connect(database)
    try:
        for statement in MEMO_DDL:
            run(conn, statement)
        conn.register("_mapped", rows.astype(str))
        with transaction(conn):
            if whole:
                run(conn, f"delete from {MEMO} where target = ?", [target])
            else:
                run(
                    conn,
                    f"delete from {MEMO} where target = ? and key in (select key from _mapped)",
                    [target],
                )
            run(
                conn,
                f'insert into {MEMO} select ?, key, "{SOURCE_HASH}", fingerprint from _mapped',
                [target],
            )
    finally:
        conn.close()
