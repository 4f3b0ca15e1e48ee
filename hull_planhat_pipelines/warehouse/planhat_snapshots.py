"""Planhat snapshots in the warehouse: stored with their history, and diffed for Hull.

Planhat back-sync by difference: a new snapshot is compared in SQL with the one last applied.

Planhat cannot filter by time, so each fetch is the whole list, appended to
``planhat.<model>_snapshots``; ``planhat_current.<name>`` shows the latest snapshot. The rows
Hull last applied are kept in ``ops.hull_planhat_<name>`` (the snapshot's own columns); a new snapshot hands Hull only its
rows that are new or whose ``record`` changed, with their previous version (a field Planhat
stopped sending was cleared). Rows without ``_id`` are always handed over (the sync logs their
skip). After the apply the copy takes the changed rows and drops those gone from Planhat, in
the same transaction: an unchanged snapshot writes nothing. A record gone keeps its last
applied row in ``ops.hull_planhat_<name>_gone``: listed again (a listing by offset can miss a
record; an archived one can be restored), it is compared with that row, so a field cleared
meanwhile is cleared in Hull.

The comparison is a full list against a full copy, so it is made where the full list is
fetched: storing a snapshot of a model Hull applies also stores its difference from the copy
(``ops.hull_planhat_<name>_diff``: the changed rows, their previous versions, the ``_id``s gone),
and Hull's job reads only those rows. Hull compares in full only when no difference was stored for the latest snapshot (its
first apply, Planhat's columns moved, or a warehouse from before).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import duckdb
import pandas as pd

from hull_planhat_pipelines.sync.hull.batch import quote as literal
from hull_planhat_pipelines.sync.hull.model import PLANHAT_PREFIX, PLANHAT_WRITER_PATH
from hull_planhat_pipelines.sync.planhat.snapshot_due import READ_BACK_STATUSES, SnapshotAge
from hull_planhat_pipelines.warehouse.connection import (
    column_schema,
    connect,
    quote,
    read_only,
    run,
    table_exists,
    transaction,
)
from hull_planhat_pipelines.warehouse.tables import differing_rows
from hull_planhat_pipelines.warehouse.views import (
    PLANHAT_SNAPSHOT_TABLES,
    latest_view,
    point_latest_view,
    snapshot_table,
)

FULL_HISTORY = dt.timedelta(days=1)
"""Every snapshot younger than this is kept; older ones only as the last of their UTC day."""


def store_snapshot(
    conn: duckdb.DuckDBPyConnection, model: str, frame: pd.DataFrame, taken: dt.datetime
) -> int:
    """Append the snapshot taken at ``taken``, prune the history, point the latest view at it
    (in the caller's transaction). An empty snapshot leaves the view empty: Planhat holds
    nothing. Returns how many snapshots the table keeps."""
    table = snapshot_table(model)
    schema, name = table.split(".")
    run(conn, f"create schema if not exists {schema}")
    conn.register("_snapshot", frame)
    try:
        if not table_exists(conn, schema, name):
            run(conn, f"create table {table} as select * from _snapshot where false")
        existing = {c[0] for c in conn.execute(f"select * from {table} limit 0").description}
        for column, dtype, *_ in conn.execute("describe select * from _snapshot").fetchall():
            if column not in existing:  # a field added to the model: older snapshots hold null
                run(conn, f"alter table {table} add column {quote(column)} {dtype}")
        run(conn, f"insert into {table} by name select * from _snapshot")
    finally:
        conn.unregister("_snapshot")
    at = pd.Timestamp(taken).tz_convert("UTC") if taken.tzinfo else pd.Timestamp(taken, tz="UTC")
    run(
        conn,
        f"delete from {table} where snapshot_at < ? and snapshot_at not in "
        f"(select max(snapshot_at) from {table} group by cast(timezone('UTC', snapshot_at) as date))",
        [(at - FULL_HISTORY).to_pydatetime()],
    )
    point_latest_view(conn, model, at.isoformat())
    return int(run(conn, f"select count(distinct snapshot_at) from {table}")[0][0])


HULL_MODELS = ("companies", "endusers")
"""The Planhat models Hull applies."""
DIFFS = "ops.hull_planhat_diffs"
"""Which snapshot each stored difference was taken for."""


def applied_table(name: str) -> str:
    return f"ops.hull_planhat_{name}"


def diff_table(name: str) -> str:
    return f"ops.hull_planhat_{name}_diff"


def gone_table(name: str) -> str:
    """The last applied version of each record gone from Planhat's list: a record a snapshot
    missed (an offset listing shifted past it, or archived, then restored) is compared with
    it when it is listed again, so a field cleared meanwhile is cleared in Hull too."""
    return f"ops.hull_planhat_{name}_gone"


def _differences(conn: duckdb.DuckDBPyConnection, name: str) -> str:
    """SQL for what Hull applies of the latest snapshot, one row per ``_change``: ``changed``
    (a new or changed record, or one without ``_id``: its row), ``previous`` (the copy's row
    of a changed record, or for one listed again, its row when it went), ``gone`` (only
    the ``_id`` of a record no longer listed) and ``deleted`` (only the ``_id`` of a record
    gone before and still not listed: absent from two snapshots in a row)."""
    copy, source, gone = applied_table(name), latest_view(name), gone_table(name)
    returned = (
        f" union all by name select 'previous' as _change, * from {gone}"
        f" where _id in (select _id from changed) and _id not in (select _id from {copy})"
        f" union all by name select 'deleted' as _change, g._id from {gone} g anti join"
        f" (select _id from {source} where _id is not null) n on n._id = g._id"
        if table_exists(conn, *gone.split("."))
        else ""
    )
    return (
        f"with changed as (select n._id from {source} n anti join {copy} a"
        " on a._id = n._id and a.record is not distinct from n.record where n._id is not null)"
        f" select 'changed' as _change, * from {source}"
        " where _id is null or _id in (select _id from changed)"
        f" union all by name select 'previous' as _change, * from {copy}"
        f" where _id in (select _id from changed){returned}"
        f" union all by name select 'gone' as _change, a._id from {copy} a anti join"
        f" (select _id from {source} where _id is not null) n on n._id = a._id"
    )


def _same_shape(conn: duckdb.DuckDBPyConnection, name: str) -> bool:
    copy = applied_table(name)
    return table_exists(conn, *copy.split(".")) and _columns(conn, copy) == _columns(
        conn, latest_view(name)
    )


def store_difference(conn: duckdb.DuckDBPyConnection, name: str, taken: pd.Timestamp) -> None:
    """With a new snapshot, in its transaction: what differs from the copy Hull last applied
    (nothing stored when there is no copy of the same columns: Hull compares in full)."""
    _forget_difference(conn, name)
    if not _same_shape(conn, name):
        return
    run(
        conn,
        f"create table if not exists {DIFFS} (name varchar primary key, snapshot_at timestamptz,"
        " applied_mark timestamptz)",
    )
    run(conn, f"create table {diff_table(name)} as {_differences(conn, name)}")
    run(
        conn,
        f"insert into {DIFFS} values (?, ?, {_applied_mark(conn)})",
        [name, taken.to_pydatetime(), f"planhat.{name}"],
    )


def _applied_mark(conn: duckdb.DuckDBPyConnection) -> str:
    """SQL (one parameter, the source) for the fetch time of the snapshot the copy holds
    (Hull's watermark): a difference is read only against the copy it was taken from."""
    if table_exists(conn, "ops", "hull_watermarks"):
        return "(select max(fetched_at) from ops.hull_watermarks where source = ?)"
    return "(select null::timestamptz where ? is not null)"


def _forget_difference(conn: duckdb.DuckDBPyConnection, name: str) -> None:
    if table_exists(conn, "ops", "hull_planhat_diffs"):
        run(conn, f"delete from {DIFFS} where name = ?", [name])
    if table_exists(conn, *diff_table(name).split(".")):
        run(conn, f"drop table {diff_table(name)}")


def _stored_difference(conn: duckdb.DuckDBPyConnection, name: str) -> bool:
    """Whether a difference was stored for the latest snapshot against the copy as it is now
    (Hull applied nothing since, and the copy was not rebuilt)."""
    if not (table_exists(conn, "ops", "hull_planhat_diffs") and _same_shape(conn, name)):
        return False
    found = run(
        conn,
        f"select 1 from {DIFFS} where name = ? and snapshot_at ="
        f" (select max(snapshot_at) from {latest_view(name)})"
        f" and applied_mark is not distinct from {_applied_mark(conn)}",
        [name, f"planhat.{name}"],
    )
    return bool(found) and table_exists(conn, *diff_table(name).split("."))


def _columns(conn: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    return [row[0] for row in conn.execute(f"select * from {table} limit 0").description or []]


@dataclass
class SnapshotDiff:
    """The rows of a new snapshot Hull has to see, and what it changes in the copy."""

    name: str
    changed: pd.DataFrame | None
    previous: pd.DataFrame | None
    fetched_at: pd.Timestamp | None
    snapshot_rows: int
    deleted: tuple[str, ...] = ()
    """``_id`` of the records absent from this snapshot and the one before (deleted)."""


PROFILES = {"endusers": "hull.users", "companies": "hull.accounts"}
"""The profile table each Planhat model's records land in."""


def restage_table(name: str) -> str:
    """Records that may write a profile a deletion detached but were not applied with it
    (missed by that snapshot, or skipped): handed over whole once they are listed and applied."""
    return f"ops.hull_planhat_{name}_restage"


def _hand_over_cowriters(conn: duckdb.DuckDBPyConnection, name: str) -> None:
    """With a deletion: the records that may write the profiles the deleted ones wrote (or
    hold): their ``planhat:`` anonymous ids, their external id, their email. Each one listed
    is handed to Hull as changed with no previous version (``handed``), so that it writes its
    group whole where the deleted one's is detached (two endusers with one email; two that
    traded emails); one gone (missed) is kept for later (``restage``), as are those of an
    earlier deletion still waiting (``restage_table``)."""
    diff, profiles, source = f"_ph_diff_{name}", PROFILES[name], latest_view(name)
    deleted = f"(select _id from {diff} where _change = 'deleted')"
    restage, gone = restage_table(name), gone_table(name)
    waiting = (
        table_exists(conn, *restage.split("."))
        and run(conn, f"select exists (select 1 from {restage})")[0][0]
    )
    judged = (
        table_exists(conn, *profiles.split(".")) and run(conn, f"select exists {deleted}")[0][0]
    )
    if not (waiting or judged):
        return
    cowriters = [f"select _id from {restage}"] if waiting else []
    if judged:
        columns = set(_columns(conn, source))
        email = "email" if name == "endusers" else None
        prefix = literal(PLANHAT_PREFIX)
        matches = [f"{prefix} || s._id in (select unnest(anonymous_ids) from _affected)"]
        if "external_id" in columns:
            matches.append("s.external_id in (select external_id from _affected)")
        if email and "email" in columns:
            matches.append(
                "lower(trim(s.email)) in (select email from _affected where email is not null)"
            )
        run(
            conn,
            "create or replace temp table _affected as select anonymous_ids, external_id"
            f"{', lower(trim(email)) as email' if email else ''} from {profiles}"
            f" where list_has_any(anonymous_ids, (select list({prefix} || _id) from {deleted}))"
            f" or json_extract_string(attributes, {literal(PLANHAT_WRITER_PATH)})"
            f" in {deleted}",
        )
        cowriters.append(f"select s._id from {source} s where ({' or '.join(matches)})")
        # not listed now (missed: in the copy or gone before), kept for when they are
        known = applied_table(name)
        if table_exists(conn, *gone.split(".")):
            known = f"(select * from {known} union all by name select * from {gone})"
        run(
            conn,
            f"insert into {diff} by name select 'restage' as _change, s._id from {known} s"
            f" where ({' or '.join(matches)}) and s._id not in {deleted}"
            f" and s._id not in (select _id from {source} where _id is not null)",
        )
    run(
        conn,
        "create or replace temp table _cowriters as select _id from"
        f" ({' union '.join(cowriters)}) where _id in (select _id from {source});"
        # compared with nothing: staged whole, whatever its previous version was
        f"delete from {diff} where _change = 'previous' and _id in (select _id from _cowriters);"
        f"insert into {diff} by name select 'changed' as _change, * from {source}"
        " where _id in (select _id from _cowriters)"
        f" and _id not in (select _id from {diff} where _change = 'changed' and _id is not null);"
        f"insert into {diff} by name select 'handed' as _change, _id from _cowriters;"
        "drop table if exists _affected; drop table _cowriters",
    )


def diff_snapshot(
    conn: duckdb.DuckDBPyConnection, name: str, mark: pd.Timestamp | None
) -> SnapshotDiff | None:
    """The changed rows of the latest snapshot fetched after ``mark`` (None: no new snapshot).

    Leaves ``_ph_diff_<name>`` (see ``_differences``) for ``remember_snapshot``."""
    if not table_exists(conn, *snapshot_table(name).split(".")):
        return None
    source = latest_view(name)
    fresh = "_fetched_at > ?" if mark is not None else "true"
    params = [mark.to_pydatetime()] if mark is not None else []
    row = conn.execute(f"select count(*), max(_fetched_at) from {source} where {fresh}", params)
    count, newest = row.fetchall()[0]
    if not count:
        return None
    copy = applied_table(name)
    same_shape = _same_shape(conn, name)
    stored = same_shape and _stored_difference(conn, name)
    if not same_shape:  # first snapshot (or Planhat's columns moved): every row is new
        run(conn, f"drop table if exists {copy}")
        run(conn, f"drop table if exists {gone_table(name)}")
        run(conn, f"drop table if exists {restage_table(name)}")
        run(conn, f"create table {copy} as select * from {source} where false")
    differences = diff_table(name) if stored else f"({_differences(conn, name)})"
    run(conn, f"create or replace temp table _ph_diff_{name} as select * from {differences}")
    _hand_over_cowriters(conn, name)

    def rows(change: str) -> pd.DataFrame:
        return conn.execute(
            f"select * exclude (_change) from _ph_diff_{name} where _change = ?", [change]
        ).fetchdf()

    changed, previous = rows("changed"), rows("previous")
    deleted = conn.execute(
        f"select _id from _ph_diff_{name} where _change = 'deleted' order by _id"
    ).fetchall()
    return SnapshotDiff(
        name=name,
        changed=changed if len(changed) else None,
        previous=previous if same_shape else None,
        fetched_at=pd.Timestamp(newest) if newest is not None else None,
        snapshot_rows=int(count),
        deleted=tuple(str(_id) for (_id,) in deleted),
    )


def remember_snapshot(
    conn: duckdb.DuckDBPyConnection, name: str, unapplied: Collection[str] = ()
) -> None:
    """The copy becomes the snapshot just applied (inside the caller's transaction): changed
    rows replaced, rows gone from Planhat moved to ``gone_table`` (a record listed again
    leaves it, as does one deleted: Hull detached it, and if it comes back it is new);
    nothing written when nothing moved. The stored difference, now applied, goes.
    ``unapplied``: ``_id`` of changed rows the sync skipped whole; the copy keeps what Hull
    last applied of them (they are compared again next time)."""
    copy, diff, gone = applied_table(name), f"_ph_diff_{name}", gone_table(name)
    if unapplied:
        conn.register("_unapplied", pd.DataFrame({"_id": sorted(unapplied)}, dtype=object))
        try:
            run(
                conn,
                f"delete from {diff} where _change = 'changed'"
                " and _id in (select _id::varchar from _unapplied)",
            )
            if table_exists(conn, *gone.split(".")):
                # listed again but skipped: what Hull last applied of it goes back to the
                # copy (it is listed, not gone: a single miss later must not read as a second)
                run(
                    conn,
                    f"insert into {copy} by name select * from {gone}"
                    " where _id in (select _id::varchar from _unapplied);"
                    f"delete from {gone} where _id in (select _id::varchar from _unapplied)",
                )
        finally:
            conn.unregister("_unapplied")
    _remember_restage(conn, name)
    went = run(conn, f"select count(*) from {diff} where _change = 'gone'")[0][0]
    if went or table_exists(conn, *gone.split(".")):
        run(
            conn,
            f"create table if not exists {gone} as select * from {copy} where false;"
            f"delete from {gone} where _id in"
            f" (select _id from {diff} where _change in ('changed', 'gone', 'deleted'));"
            f"insert into {gone} by name select * from {copy}"
            f" where _id in (select _id from {diff} where _change = 'gone')",
        )
    run(
        conn,
        f"delete from {copy} where _id in"
        f" (select _id from {diff} where _change in ('changed', 'gone') and _id is not null);"
        f"insert into {copy} by name select * exclude (_change) from {diff}"
        " where _change = 'changed' and _id is not null;"
        f"drop table {diff}",
    )
    _forget_difference(conn, name)


def _remember_restage(conn: duckdb.DuckDBPyConnection, name: str) -> None:
    """``restage_table`` after an apply: it gains the records kept for later and the handed
    ones not applied (skipped), and loses those applied now or deleted."""
    diff, restage = f"_ph_diff_{name}", restage_table(name)
    pending = run(
        conn, f"select exists (select 1 from {diff} where _change in ('restage', 'handed'))"
    )[0][0]
    if not (pending or table_exists(conn, *restage.split("."))):
        return
    applied = f"(select _id from {diff} where _change in ('changed', 'deleted'))"
    run(
        conn,
        f"create table if not exists {restage} (_id varchar);"
        f"insert into {restage} select distinct _id from {diff} where (_change = 'restage'"
        f" or (_change = 'handed' and _id not in {applied}))"
        f" and _id not in (select _id from {restage});"
        f"delete from {restage} where _id in {applied}",
    )


@dataclass(frozen=True)
class StoredSnapshot:
    kept: int
    """Snapshots the table keeps."""
    changed: int
    """Rows that differ from the previous snapshot (fetch times aside): new, changed or gone;
    plus the records found deleted (absent from this snapshot and the one before: the list is
    as before, but Hull has profiles to detach)."""
    first: bool
    """No snapshot was stored before this one."""
    schema: dict[str, Any]
    """The table's ``dagster/column_schema``."""


def _change_from_latest(
    conn: duckdb.DuckDBPyConnection, model: str, frame: pd.DataFrame
) -> tuple[int, bool]:
    """``(rows differing from the latest snapshot, no snapshot before)``, before ``frame`` is
    stored; compared on the snapshot's columns, its fetch and snapshot times aside."""
    latest = latest_view(model)
    if not table_exists(conn, *latest.split(".")):
        return len(frame), True
    if "record" not in frame.columns or "record" not in _columns(conn, latest):
        conn.register("_new_snapshot", frame)
        try:
            changed = differing_rows(
                conn, latest, "_new_snapshot", ignore=("_fetched_at", "snapshot_at")
            )
        finally:
            conn.unregister("_new_snapshot")
        return changed, False
    # every column of a snapshot row is read from its record: rows are equal when their
    # records are (a hash join on the text, not a set difference over every column)
    conn.register("_new_snapshot", frame[["record"]])
    try:
        changed = conn.execute(
            f"select count(*) from (select record from {latest}) o"
            " full join _new_snapshot n on o.record = n.record"
            " where o.record is null or n.record is null"
        ).fetchall()[0][0]
    finally:
        conn.unregister("_new_snapshot")
    return int(changed), False


def _deleted_count(conn: duckdb.DuckDBPyConnection, name: str) -> int:
    """Records of the difference just stored that were absent twice in a row (deleted)."""
    if not table_exists(conn, *diff_table(name).split(".")):
        return 0
    return int(
        run(conn, f"select count(*) from {diff_table(name)} where _change = 'deleted'")[0][0]
    )


def write_snapshot(
    path: str, model: str, frame: pd.DataFrame, taken: dt.datetime
) -> StoredSnapshot:
    """Store a snapshot in one short transaction (opened after the fetch: no connection held
    across HTTP), and say how it differs from the one before."""
    conn = connect(path)
    try:
        with transaction(conn):
            changed, first = _change_from_latest(conn, model, frame)
            kept = store_snapshot(conn, model, frame, taken)
            if model in HULL_MODELS:
                at = pd.Timestamp(taken)
                store_difference(conn, model, at if at.tzinfo else at.tz_localize("UTC"))
                changed += _deleted_count(conn, model)
            schema = column_schema(conn, *snapshot_table(model).split("."))
    finally:
        conn.close()
    return StoredSnapshot(kept=kept, changed=changed, first=first, schema=schema)


def snapshot_age(path: str, targets: Collection[str]) -> SnapshotAge:
    """The newest snapshot of every Planhat model (the oldest of them) and whether a delivery
    to one of ``targets`` recorded after it created records or left outcomes in doubt (what a
    snapshot must read back); read-only."""
    with read_only(path) as conn:
        if conn is None:
            return SnapshotAge(taken_at=None, unread_writes=False)
        newest: list[dt.datetime] = []
        for model in PLANHAT_SNAPSHOT_TABLES:
            schema, name = snapshot_table(model).split(".")
            if not table_exists(conn, schema, name):
                return SnapshotAge(taken_at=None, unread_writes=False)
            (taken,) = conn.execute(f"select max(snapshot_at) from {schema}.{name}").fetchone()
            if taken is None:
                return SnapshotAge(taken_at=None, unread_writes=False)
            newest.append(taken)
        taken_at = min(newest)
        written = False
        if targets and table_exists(conn, "planhat", "deliveries"):
            marks = ", ".join("?" for _ in targets)
            statuses = ", ".join("?" for _ in READ_BACK_STATUSES)
            (written,) = conn.execute(
                "select count(*) > 0 from planhat.deliveries "
                f"where target in ({marks}) and status in ({statuses}) and delivered_at > ?",
                [*sorted(targets), *sorted(READ_BACK_STATUSES), taken_at],
            ).fetchone()
        return SnapshotAge(taken_at=taken_at, unread_writes=bool(written))
