"""The Hull firehose outbox (``hull.firehose_outbox``): every read and write of it.

Rows are queued inside the transaction that applies a sync, read in order by the forwarding,
and deleted batch by batch once the firehose took them. Each read and delete opens and closes
its own connection: none is held while a firehose request or its backoff is under way.
"""

from __future__ import annotations

import duckdb
import pandas as pd

from hull_planhat_pipelines.sync.hull.changes import Changes
from hull_planhat_pipelines.sync.hull.outbox import OUTBOX_COLUMNS, outbox_rows
from hull_planhat_pipelines.warehouse import append_table, connect, run, table_exists

OUTBOX = "hull.firehose_outbox"
OUTBOX_DDL = [
    f"create table if not exists {OUTBOX} (message_key varchar, kind varchar, "
    "user_claims varchar, account_claims varchar, body varchar, revision varchar, seq bigint)",
    # outboxes written before rows were numbered: number them, older than any new row
    f"alter table {OUTBOX} add column if not exists seq bigint",
    f"update {OUTBOX} set seq = rowid - (select max(rowid) + 1 from {OUTBOX}) where seq is null",
]


def queue(
    conn: duckdb.DuckDBPyConnection,
    changes: Changes,
    users: pd.DataFrame,
    accounts: pd.DataFrame,
    *,
    run_id: str,
) -> int:
    """Add the messages of applied ``changes`` to the outbox (inside the caller's transaction),
    numbered after every row already queued; returns how many."""
    messages = outbox_rows(
        changes.user_upserts,
        changes.account_upserts,
        changes.links,
        changes.events,
        users,
        accounts,
        revision=run_id,
    )
    if messages.empty:
        return 0
    last = conn.execute(f"select greatest(coalesce(max(seq), 0), 0) from {OUTBOX}").fetchone()
    first = int(last[0] if last else 0) + 1
    messages["seq"] = pd.Series(range(first, first + len(messages)), dtype="int64")
    append_table(conn, OUTBOX, messages)
    return len(messages)


def counts_by_kind(database: str) -> dict[str, int]:
    """How many messages are queued, by kind (opened and closed here)."""
    conn = connect(database)
    try:
        if not table_exists(conn, "hull", "firehose_outbox"):
            return {}
        rows = run(conn, f"select kind, count(*) from {OUTBOX} group by kind order by kind")
        return {str(kind): int(n) for kind, n in rows}
    finally:
        conn.close()


def page(database: str, after: int | None, limit: int) -> pd.DataFrame:
    """Up to ``limit`` queued messages numbered after ``after``, oldest first: one batch's
    worth read in a connection closed before the batch is sent."""
    conn = connect(database)
    try:
        if not table_exists(conn, "hull", "firehose_outbox"):
            return pd.DataFrame(columns=["seq", *OUTBOX_COLUMNS])
        columns = ", ".join(OUTBOX_COLUMNS)
        where = "" if after is None else "where seq > ?"
        return conn.execute(
            f"select seq, {columns} from {OUTBOX} {where} order by seq limit {int(limit)}",
            [] if after is None else [after],
        ).fetchdf()
    finally:
        conn.close()


def checkpoint(database: str, seqs: list[int]) -> None:
    """The rows of a delivered batch leave the outbox, committed before the next batch."""
    conn = connect(database)
    try:
        conn.register("_sent", pd.DataFrame({"seq": pd.Series(seqs, dtype="int64")}))
        run(conn, f"delete from {OUTBOX} where seq in (select seq from _sent)")
    finally:
        conn.close()
