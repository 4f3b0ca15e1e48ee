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

A row's hash covers its JSON text, the destination's settings (its exclusions, path and keys
change what a row maps to) and ``MAPPING_VERSION`` (raised when the mapping itself changes).
"""

from __future__ import annotations

import duckdb
import pandas as pd

from hull_planhat_pipelines.settings import DestinationSettings
from hull_planhat_pipelines.sync.canonical import canonical_hash
from hull_planhat_pipelines.sync.operator_sql import as_subquery
from hull_planhat_pipelines.sync.planhat.destinations import SOURCE_HASH
from hull_planhat_pipelines.warehouse.connection import connect, run, table_exists
from hull_planhat_pipelines.warehouse.deliveries import FINGERPRINTS

MEMO = "ops.destination_source_memo"
MEMO_DDL = (
    "create schema if not exists ops",
    f"create table if not exists {MEMO} "
    "(target varchar, key varchar, source_hash varchar, fingerprint varchar)",
)
MAPPING_VERSION = "1"


def source_digest(destination: DestinationSettings) -> str:
    """What, besides the row, decides what a row maps to."""
    return canonical_hash([MAPPING_VERSION, destination.model_dump(mode="json")])


def hashed_source(sql: str) -> str:
    """The operator's SELECT with each row's hash as ``SOURCE_HASH`` (parameter: the digest)."""
    return (
        f'select s.*, md5(? || to_json(s)::varchar) as "{SOURCE_HASH}" from ({as_subquery(sql)}) s'
    )


def changed_source(sql: str) -> str:
    """The rows of ``hashed_source`` the memo cannot vouch for (parameters: the digest and the
    target)."""
    return (
        f"select * from ({hashed_source(sql)}) h where not exists (select 1 from {MEMO} m"
        f" join {FINGERPRINTS} f on f.target = m.target and f.key = m.key"
        f' and f.fingerprint = m.fingerprint where m.target = ? and m.source_hash = h."{SOURCE_HASH}")'
    )


def memo_ready(conn: duckdb.DuckDBPyConnection) -> bool:
    """The memo and the fingerprints exist: a run may leave out what they vouch for."""
    return table_exists(conn, *MEMO.split(".")) and table_exists(conn, *FINGERPRINTS.split("."))


def remember_mapped(database: str, target: str, mapped: pd.DataFrame, *, whole: bool) -> None:
    """Keep what the rows mapped this run (``key``, ``fingerprint``, ``SOURCE_HASH``) mapped to.

    ``whole``: the run mapped every row of the source, so the target's memo is replaced (keys
    gone from the source leave it); otherwise the mapped keys' entries are replaced."""
    rows = mapped.loc[mapped[SOURCE_HASH].notna(), ["key", "fingerprint", SOURCE_HASH]]
    if rows.empty and not whole:
        return
    conn = connect(database)
    try:
        for statement in MEMO_DDL:
            run(conn, statement)
        conn.register("_mapped", rows.astype(str))
        run(conn, "begin transaction")
        try:
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
            run(conn, "commit")
        except Exception:
            run(conn, "rollback")
            raise
    finally:
        conn.close()
