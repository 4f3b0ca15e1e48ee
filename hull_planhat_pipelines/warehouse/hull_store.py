"""The profile store in the warehouse, read and written by the change, not by its size.

A sync reads the slice of ``hull.users`` / ``hull.accounts`` / ``hull.events`` its staged
records can touch (``StoreSlice``: the keys are joined against the store in SQL, so nothing
else leaves DuckDB; records gone from Copper are those ``warehouse.removals`` logged since the
store was last judged) and merges back the rows that changed (delete and insert of the changed
keys, inside the caller's transaction). Segment membership is recomputed for the changed
profiles and the users of changed accounts (of those whose change a user segment can see: see
``changed_segments``); all profiles only when a definition changed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace

import duckdb
import pandas as pd

from hull_planhat_pipelines.settings import SegmentSettings
from hull_planhat_pipelines.sync.hull.apply import apply_changes
from hull_planhat_pipelines.sync.hull.batch import quote
from hull_planhat_pipelines.sync.hull.change_groups import (
    STRUCTURAL,
    changed_groups,
    group_rows,
)
from hull_planhat_pipelines.sync.hull.changes import Changes, ProfileStore, StoreKeys, StoreSlice
from hull_planhat_pipelines.sync.hull.deletions import DETACHABLE
from hull_planhat_pipelines.sync.hull.model import (
    DOMAIN_CLAIM,
    EVENT_COLUMNS,
    PLANHAT_WRITER_ATTRIBUTE,
    PLANHAT_WRITER_PATH,
    STORE_COLUMNS,
    STORE_SQL_TYPES,
    WRITER_CLAIM,
    Kind,
    empty_events,
    empty_store,
)
from hull_planhat_pipelines.sync.hull.segments import (
    account_columns_read,
    evaluate_segments,
    moving_accounts,
)
from hull_planhat_pipelines.warehouse import removals
from hull_planhat_pipelines.warehouse.connection import (
    fetch_rowids,
    fetch_where,
    has_column,
    run,
    table_exists,
    trimmed,
)

TABLES: dict[Kind, str] = {"user": "hull.users", "account": "hull.accounts"}
COLUMN_TYPES = {
    **STORE_SQL_TYPES,
    "segments": "VARCHAR[]",
    "event_id": "VARCHAR",
    "user_hull_id": "VARCHAR",
    "name": "VARCHAR",
    "properties": "VARCHAR",
    "occurred_at": "TIMESTAMPTZ",
    "source": "VARCHAR",
    "source_id": "VARCHAR",
}
"""Typed even when a frame is empty (an empty object column has no type of its own)."""


def _exists(conn: duckdb.DuckDBPyConnection, table: str) -> bool:
    schema, name = table.split(".")
    return table_exists(conn, schema, name)


def _fetched(conn: duckdb.DuckDBPyConnection, table: str) -> bool:
    """Whether a Copper object was ever fetched (its deletions are judged only then)."""
    return _exists(conn, f"copper_current.{table}") and _exists(conn, f"copper.{table}")


def _all_ids(table: str) -> str:
    """SQL for the ids of a ``copper_current`` table (those of its raw table: a distinct scan
    is cheaper than the view's window)."""
    return f"(select distinct id::varchar as id from copper.{table})"


def _alive_among(conn: duckdb.DuckDBPyConnection, table: str, ids: str) -> pd.Series:
    """The ids of ``ids`` (SQL, text) still in ``copper.<table>``: the table is filtered by
    them before anything is kept, so the cost is a scan, not a set of every id."""
    rows = conn.execute(
        f"select distinct id::varchar from copper.{table} where id::varchar in {ids}"
    ).fetchall()
    return pd.Series([row[0] for row in rows], dtype=object)


class SliceReader:
    """The ``StoreReader`` of a sync over the warehouse: reads with ``read_slice`` and keeps
    what it read (``store``: the slice, with the users read on the second call), which the
    sync's write starts from. The core gets the profiles without their ``segments``, which the
    reader keeps apart (``segments``: per kind, by ``hull_id``) for the write to compare."""

    def __init__(self, conn: duckdb.DuckDBPyConnection) -> None:
        self.conn = conn
        self.store = ProfileStore()
        self.segments: dict[Kind, dict[str, object]] = {"user": {}, "account": {}}

    def __call__(self, keys: StoreKeys) -> StoreSlice:
        part = read_slice(self.conn, keys)
        part = replace(
            part,
            store=replace(
                part.store,
                users=self._held("user", part.store.users),
                accounts=self._held("account", part.store.accounts),
            ),
        )
        if keys.account_users is None:
            self.store = part.store
        else:
            users = [f for f in (self.store.users, part.store.users) if f is not None]
            self.store = replace(self.store, users=pd.concat(users, ignore_index=True))
        return part

    def _held(self, kind: Kind, profiles: pd.DataFrame | None) -> pd.DataFrame | None:
        if profiles is None or "segments" not in profiles.columns:
            return profiles
        self.segments[kind].update(_by_id(profiles))
        return profiles.drop(columns=["segments"])


def read_slice(conn: duckdb.DuckDBPyConnection, keys: StoreKeys) -> StoreSlice:
    """The ``StoreSlice`` for ``keys`` (see ``hull.changes.StoreSlice`` for what it holds), its
    profiles with their stored ``segments`` (``SliceReader`` hands the core them without)."""
    if keys.account_users is not None:
        return _account_users(conn, keys.account_users)
    has = {kind: _exists(conn, table) for kind, table in TABLES.items()}
    conn.register("_keys_frame", keys.claims[["kind", "claim", "value"]])
    conn.register("_event_ids_frame", pd.DataFrame({"event_id": keys.event_ids.astype(object)}))
    try:
        run(
            conn,
            "create or replace temp table _keys as select kind::varchar as kind,"
            " claim::varchar as claim, value::varchar as value from _keys_frame",
        )
        run(
            conn,
            "create or replace temp table _event_ids as"
            " select event_id::varchar as event_id from _event_ids_frame",
        )
    finally:
        conn.unregister("_keys_frame")
        conn.unregister("_event_ids_frame")
    for kind, table in TABLES.items():
        run(conn, f"create or replace temp table _rows_{kind} (r bigint)")
        if not has[kind]:
            continue
        other = DOMAIN_CLAIM[kind]
        claims = f"(select value from _keys where kind = '{kind}' and claim = '%s')"
        # ``union all``: the rows are only ever matched with ``in`` (a union's distinct cost
        # more); row ids, not hull ids: a scan then reads only the column it tests, and the
        # rows are fetched by them without a scan to find their row ids
        run(
            conn,
            f"insert into _rows_{kind} {_matching_rows(table, other, claims % other)}"
            f" union all select rowid from {table} where external_id in"
            f" {claims % 'external_id'} union all select rowid from (select rowid,"
            f" unnest(anonymous_ids) as v from {table}) where v in {claims % 'anonymous_id'}",
        )
        if run(
            conn, f"select count(*) from _keys where kind = '{kind}' and claim = '{WRITER_CLAIM}'"
        )[0][0]:
            # the profiles a deleted Planhat record wrote (a scan, only when one was deleted);
            # ``contains`` on the key's JSON text skips the profiles without one unparsed
            key_text = quote('"' + PLANHAT_WRITER_ATTRIBUTE + '"')
            run(
                conn,
                f"insert into _rows_{kind} select rowid from {table}"
                f" where contains(attributes, {key_text})"
                f" and json_extract_string(attributes, {quote(PLANHAT_WRITER_PATH)})"
                f" in {claims % WRITER_CLAIM}",
            )
        if keys.opportunities:  # every holder of an opportunity group is re-judged
            run(
                conn,
                f"insert into _rows_{kind} select rowid from {table}"
                " where contains(attributes, '\"copper_opportunity_')",
            )
    by_log = removals.judged_by_log(conn)
    current: list[str] = []
    for source_table, kind, prefix, _, _ in DETACHABLE:
        if not _fetched(conn, source_table):
            continue
        current.append(source_table)
        if not has[kind]:
            continue
        # profiles holding a record gone from Copper: those the log names, or (never judged
        # by the log) every profile holding an id no longer in the table
        start = len(prefix) + 1
        if by_log:
            removed = removals.removed_ids(conn, source_table)
            gone = f"v in (select '{prefix}' || id from {removed})" if removed else None
        else:
            gone = (
                f"starts_with(v, '{prefix}') and regexp_full_match(substr(v, {start}),"
                f" '[0-9]+') and substr(v, {start}) not in {_all_ids(source_table)}"
            )
        if gone:
            run(
                conn,
                f"insert into _rows_{kind} select rowid from (select rowid,"
                f" unnest(anonymous_ids) as v from {TABLES[kind]}) where {gone}",
            )
    profiles = {"user": _read_ids(conn, "user", has["user"])}
    if has["account"]:
        # the accounts of those users, from the rows just read (another scan of the users
        # cost as much as reading them; an account's other users: ``_account_users``)
        linked = profiles["user"]["account_hull_id"].dropna().astype(str).drop_duplicates()
        conn.register("_linked_accounts", pd.DataFrame({"hull_id": linked.astype(object)}))
        try:
            run(
                conn,
                "insert into _rows_account select rowid from hull.accounts"
                " where hull_id in (select hull_id::varchar from _linked_accounts)",
            )
        finally:
            conn.unregister("_linked_accounts")
    profiles["account"] = _read_ids(conn, "account", has["account"])
    events = empty_events()
    activities = _fetched(conn, "activities")
    current_ids = {table: _held_alive(conn, table) for table in current}
    if _exists(conn, "hull.events"):
        read = (
            "event_id in (select event_id from _event_ids)"
            " or user_hull_id in (select hull_id from _ids_user)"
        )
        if activities and not by_log:
            read += (
                f" or (source = 'copper' and source_id::varchar not in {_all_ids('activities')})"
            )
        elif activities and (removed := removals.removed_ids(conn, "activities")):
            read += f" or (source = 'copper' and source_id::varchar in {removed})"
        events = _utc(fetch_where(conn, "hull.events", read, ", ".join(EVENT_COLUMNS)))
        if activities:  # the living activities among the events read
            sources = events.loc[events["source"] == "copper", ["source_id"]].astype(str)
            conn.register("_event_sources", sources)
            try:
                current_ids["activities"] = _alive_among(
                    conn, "activities", "(select source_id from _event_sources)"
                )
            finally:
                conn.unregister("_event_sources")
    elif activities:
        current_ids["activities"] = pd.Series([], dtype=object)
    run(conn, "drop table if exists _keys; drop table if exists _event_ids")
    store = ProfileStore(users=profiles["user"], accounts=profiles["account"], events=events)
    return StoreSlice(store=store, current_ids=current_ids)


def _read_ids(conn: duckdb.DuckDBPyConnection, kind: Kind, has: bool) -> pd.DataFrame:
    """The stored ``kind`` profiles at the row ids ``_rows_<kind>`` holds; their hull ids
    become ``_ids_<kind>``, which the rest of the slice (and ``_account_users``) reads."""
    run(conn, f"create or replace temp table _ids_{kind} (hull_id varchar)")
    if not has:
        return empty_store(kind)
    profiles = _utc(fetch_rowids(conn, TABLES[kind], f"_rows_{kind}"))
    conn.register("_read_profiles", profiles[["hull_id"]])
    try:
        run(conn, f"insert into _ids_{kind} select hull_id::varchar from _read_profiles")
    finally:
        conn.unregister("_read_profiles")
    return profiles


def _account_users(conn: duckdb.DuckDBPyConnection, accounts: pd.Series) -> StoreSlice:
    """The users of ``accounts`` the slice (``_ids_user``, still there) did not hold."""
    users = empty_store("user")
    if _exists(conn, TABLES["user"]):
        conn.register("_accounts_frame", pd.DataFrame({"hull_id": accounts.astype(object)}))
        try:
            users = _utc(
                fetch_where(
                    conn,
                    TABLES["user"],
                    "account_hull_id in (select hull_id::varchar from _accounts_frame)"
                    " and hull_id not in (select hull_id from _ids_user)",
                )
            )
        finally:
            conn.unregister("_accounts_frame")
    return StoreSlice(store=ProfileStore(users=users), current_ids={})


def _matching_rows(table: str, column: str, values: str) -> str:
    """SQL for the row ids of the profiles whose ``column`` matches one of ``values`` (non-blank, trimmed and
    lower-cased, as claims are) the way claims match: ``lower(trim(column))``, in one scan."""
    return f"select rowid from {table} where lower({trimmed(column)}) in {values}"


def _utc(frame: pd.DataFrame) -> pd.DataFrame:
    """Timestamps as the core makes them (``datetime64[ns, UTC]``): DuckDB returns them in its
    session zone (``Etc/UTC``), and concatenating the two zones falls back to objects."""
    for column in ("created_at", "updated_at", "occurred_at"):
        if column in frame.columns and isinstance(frame[column].dtype, pd.DatetimeTZDtype):
            frame[column] = frame[column].dt.tz_convert("UTC").astype("datetime64[ns, UTC]")
    return frame


def kind_of(table: str) -> Kind:
    return next(kind for source, kind, *_ in DETACHABLE if source == table)


def prefix_of(table: str) -> str:
    return next(prefix for source, _, prefix, *_ in DETACHABLE if source == table)


def _held_alive(conn: duckdb.DuckDBPyConnection, table: str) -> pd.Series:
    """The living ids of ``copper.<table>`` among the anonymous ids the slice holds."""
    kind, prefix = kind_of(table), prefix_of(table)
    if not _exists(conn, TABLES[kind]):
        return pd.Series([], dtype=object)
    held = (
        f"(select substr(v, {len(prefix) + 1}) from (select unnest(anonymous_ids) as v"
        f" from {TABLES[kind]} where rowid in (select r from _rows_{kind}))"
        f" where starts_with(v, '{prefix}'))"
    )
    return _alive_among(conn, table, held)


def drop_slice(conn: duckdb.DuckDBPyConnection) -> None:
    for kind in TABLES:
        run(conn, f"drop table if exists _ids_{kind}")
        run(conn, f"drop table if exists _rows_{kind}")


# -- writing -----------------------------------------------------------------------------------
def _whole_store(conn: duckdb.DuckDBPyConnection) -> ProfileStore:
    """Every profile and event (only when every profile's segments must be re-evaluated)."""

    def table(name: str, empty: Callable[[], pd.DataFrame]) -> pd.DataFrame:
        if not table_exists(conn, "hull", name):
            return empty()
        frame = conn.execute(f"select * from hull.{name}").fetchdf()
        return frame.drop(columns=["segments"], errors="ignore")

    return ProfileStore(
        users=table("users", lambda: empty_store("user")),
        accounts=table("accounts", lambda: empty_store("account")),
        events=table("events", empty_events),
    )


def _merged_away(changes: Changes, kind: str) -> list[str]:
    merges = changes.merges
    return merges.loc[merges["kind"] == kind, "from_hull_id"].tolist()


def write_changes(
    conn: duckdb.DuckDBPyConnection,
    segments: SegmentSettings,
    part: ProfileStore,
    changes: Changes,
    now: dt.datetime,
    *,
    everything: bool,
    held_segments: Mapping[Kind, Mapping[str, object]],
) -> ProfileStore:
    """Apply ``changes`` to the store in place; returns the profiles read after the changes
    (the slice, or the whole store) to name them in messages. ``everything``: the store is
    rewritten with every profile's segments (the first load, or a segment definition changed).
    ``held_segments``: the stored segments of the slice's profiles (``SliceReader.segments``);
    a changed profile the slice did not hold is a new one."""
    if everything:
        store = apply_changes(_whole_store(conn), changes, now)
        users, accounts = evaluate_segments(store.users, store.accounts, segments)
        replace_table(conn, "hull.users", users)
        replace_table(conn, "hull.accounts", accounts)
        replace_table(conn, "hull.events", store.events)
        log_changes(
            conn,
            {
                "user": group_rows(users["hull_id"], STRUCTURAL),
                "account": group_rows(accounts["hull_id"], STRUCTURAL),
            },
        )
        return store
    store = apply_changes(part, changes, now)
    user_ids, account_ids = changes.touched_ids("user"), changes.touched_ids("account")
    users, accounts, moved, stored = changed_segments(
        conn,
        part,
        store.users[store.users["hull_id"].isin(user_ids)],
        store.accounts[store.accounts["hull_id"].isin(account_ids)],
        segments,
        held_segments,
    )
    logged = {
        "user": pd.concat(
            [
                changed_groups(
                    _with_segments("user", _rows_of(part.users, users), stored["user"]),
                    users,
                    changes.user_upserts,
                ),
                group_rows(moved["hull_id"], STRUCTURAL),
            ],
            ignore_index=True,
        ),
        "account": changed_groups(
            _with_segments("account", _rows_of(part.accounts, accounts), stored["account"]),
            accounts,
            changes.account_upserts,
        ),
    }
    merge_rows(conn, "hull.users", "hull_id", users, _merged_away(changes, "user"))
    merge_rows(conn, "hull.accounts", "hull_id", accounts, _merged_away(changes, "account"))
    update_segments(conn, moved)
    merge_rows(
        conn,
        "hull.events",
        "event_id",
        changes.events[EVENT_COLUMNS],
        changes.removed_events["event_id"].tolist(),
    )
    log_changes(conn, logged)
    return store


CHANGES = "ops.hull_changes"
CHANGES_DDL = (
    f"create table if not exists {CHANGES} (kind varchar, hull_id varchar, grp varchar, seq bigint)"
)
"""The change log: per profile and per part of it (``grp``: an attribute group, or
``STRUCTURAL``; see ``sync.hull.change_groups``), the sequence number of the last apply that
rewrote it. Readers keep a watermark of the sequence they have mapped.

One row per ``(kind, hull_id, grp)``, kept so by each apply (it deletes the rows it rewrites,
then inserts them), not by a primary key: an ``insert or replace`` loads the key's whole index
into memory (23 MB at 390,000 rows, ten times that at a million profiles) and a checkpoint
writes it again, on every apply, however few profiles it rewrote."""


def change_seq(conn: duckdb.DuckDBPyConnection) -> int:
    """The sequence number of the last apply that changed a profile (0: none yet)."""
    if not _exists(conn, CHANGES):
        return 0
    row = conn.execute(f"select coalesce(max(seq), 0) from {CHANGES}").fetchall()[0]
    return int(row[0]) if row else 0


def changed_since(
    conn: duckdb.DuckDBPyConnection, kind: Kind, seq: int, groups: Iterable[str]
) -> str:
    """SQL: the ``hull_id`` of the ``kind`` profiles rewritten after ``seq`` in any of
    ``groups`` (a log written before groups were recorded counts every rewrite)."""
    where = f"kind = {quote(kind)} and seq > {int(seq)}"
    if has_column(conn, CHANGES, "grp"):
        listed = ", ".join(quote(g) for g in sorted(groups))
        where += f" and grp in ({listed})"
    return f"(select hull_id from {CHANGES} where {where})"


def _ensure_change_log(conn: duckdb.DuckDBPyConnection) -> None:
    """The log, created or brought to the grouped form (an older log's rows become
    ``STRUCTURAL``: read by everyone, as before)."""
    run(conn, "create schema if not exists ops")
    if _exists(conn, CHANGES) and not has_column(conn, CHANGES, "grp"):
        run(conn, f"alter table {CHANGES} rename to hull_changes_ungrouped")
        run(conn, CHANGES_DDL)
        run(
            conn,
            f"insert into {CHANGES} select kind, hull_id, {quote(STRUCTURAL)}, seq"
            " from ops.hull_changes_ungrouped",
        )
        run(conn, "drop table ops.hull_changes_ungrouped")
    if _exists(conn, CHANGES) and _has_primary_key(conn, CHANGES):
        run(conn, f"alter table {CHANGES} rename to hull_changes_keyed")
        run(conn, CHANGES_DDL)
        run(
            conn,
            f"insert into {CHANGES} select kind, hull_id, grp, seq from ops.hull_changes_keyed",
        )
        run(conn, "drop table ops.hull_changes_keyed")
    run(conn, CHANGES_DDL)


def _has_primary_key(conn: duckdb.DuckDBPyConnection, table: str) -> bool:
    """Whether ``table`` was written with a primary key (a log of an earlier version)."""
    schema, name = table.split(".")
    rows = run(
        conn,
        "select count(*) from duckdb_constraints() where schema_name = ? and table_name = ?"
        " and constraint_type = 'PRIMARY KEY' and database_name = current_database()",
        [schema, name],
    )
    return bool(rows and rows[0][0])


def _rows_of(profiles: pd.DataFrame | None, rewritten: pd.DataFrame) -> pd.DataFrame | None:
    """The rows of ``profiles`` (as read) that the apply rewrote: a slice also holds the
    untouched users of every touched account, which the change log need not compare."""
    if profiles is None:
        return None
    return profiles[profiles["hull_id"].isin(rewritten["hull_id"])]


def _with_segments(
    kind: Kind, profiles: pd.DataFrame | None, stored: dict[str, object]
) -> pd.DataFrame:
    """``profiles`` as read before the apply (without segments), with their stored segments
    (``stored``: segments by ``hull_id``)."""
    if profiles is None or profiles.empty:
        return empty_store(kind).assign(segments=pd.Series([], dtype=object))
    return profiles.assign(segments=[stored.get(str(h)) for h in profiles["hull_id"]])


def log_changes(conn: duckdb.DuckDBPyConnection, groups: dict[str, pd.DataFrame]) -> int:
    """Record what one apply rewrote (per kind, ``hull_id`` and ``grp`` rows) under the next
    sequence number (inside the caller's transaction); returns that number (unchanged when
    nothing was rewritten)."""
    _ensure_change_log(conn)
    seq = change_seq(conn)
    frame = pd.concat(
        [part.assign(kind=kind) for kind, part in groups.items()], ignore_index=True
    ).drop_duplicates()
    if frame.empty:
        return seq
    conn.register("_changed_profiles", frame[["kind", "hull_id", "grp"]])
    try:
        run(
            conn,
            "create or replace temp table _logged as select kind::varchar as kind,"
            " hull_id::varchar as hull_id, grp::varchar as grp from _changed_profiles",
        )
    finally:
        conn.unregister("_changed_profiles")
    run(
        conn,
        f"delete from {CHANGES} c using _logged l"
        " where c.kind = l.kind and c.hull_id = l.hull_id and c.grp = l.grp",
    )
    run(conn, f"insert into {CHANGES} select kind, hull_id, grp, ? from _logged", [seq + 1])
    run(conn, "drop table _logged")
    return seq + 1


def _typed_select(frame: pd.DataFrame, view: str) -> str:
    columns = ", ".join(
        f'cast("{c}" as {COLUMN_TYPES[c]}) as "{c}"' if c in COLUMN_TYPES else f'"{c}"'
        for c in frame.columns
    )
    return f"select {columns} from {view}"


def replace_table(conn: duckdb.DuckDBPyConnection, table: str, frame: pd.DataFrame) -> None:
    """The whole table (a first load, or every profile after a segment definition changed)."""
    conn.register("_replacement", frame)
    try:
        run(conn, f"create or replace table {table} as {_typed_select(frame, '_replacement')}")
    finally:
        conn.unregister("_replacement")


def merge_rows(
    conn: duckdb.DuckDBPyConnection,
    table: str,
    key: str,
    rows: pd.DataFrame,
    removed: list[str] | None = None,
) -> None:
    """Rows of ``table`` with the keys of ``rows`` replaced by them, and ``removed`` keys gone."""
    gone = pd.DataFrame({key: pd.Series([*rows[key].tolist(), *(removed or [])], dtype=object)})
    if gone.empty:
        return
    conn.register("_gone_keys", gone)
    try:
        run(conn, f"delete from {table} where {key} in (select {key}::varchar from _gone_keys)")
    finally:
        conn.unregister("_gone_keys")
    if rows.empty:
        return
    conn.register("_merged", rows)
    try:
        columns = ", ".join(f'"{c}"' for c in rows.columns)
        run(conn, f"insert into {table} ({columns}) {_typed_select(rows, '_merged')}")
    finally:
        conn.unregister("_merged")


def read_profiles(conn: duckdb.DuckDBPyConnection, kind: Kind, where: str) -> pd.DataFrame:
    """Stored profiles of one kind matching ``where`` (with their ``segments``)."""
    if not _exists(conn, TABLES[kind]):
        return empty_store(kind).assign(segments=pd.Series([], dtype=object))
    return _utc(fetch_where(conn, TABLES[kind], where))


def changed_segments(
    conn: duckdb.DuckDBPyConnection,
    part: ProfileStore,
    users: pd.DataFrame,
    accounts: pd.DataFrame,
    segments: SegmentSettings,
    held: Mapping[Kind, Mapping[str, object]],
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[Kind, dict[str, object]]]:
    """Segments of the changed ``users`` and ``accounts`` (their new rows), plus the stored users
    of changed accounts whose membership moved: ``(users, accounts, moved, stored)``; ``moved``
    holds ``hull_id`` and the new ``segments``, ``stored`` the segments the changed profiles
    held before (by ``hull_id``, per kind; a new profile has none).

    The changed profiles are the slice's (``part``, read before the apply on this connection)
    or new ones, so their stored segments are ``held``, read with the slice. The full rows the
    evaluation needs (the unchanged accounts of the users evaluated) come from ``part`` too;
    any it lacks is read from the store. An account's other users are read, in one narrow
    scan, and evaluated only when a column of the account that user segments read changed
    (``moving_accounts``): a renamed account moves no member of a segment on its segments."""
    accounts = accounts[STORE_COLUMNS["account"]]
    users = users[STORE_COLUMNS["user"]]
    changed_accounts = set(accounts["hull_id"])
    changed_users = set(users["hull_id"])
    stored: dict[Kind, dict[str, object]] = {
        kind: {h: held[kind][h] for h in ids if h in held.get(kind, {})}
        for kind, ids in (("user", changed_users), ("account", changed_accounts))
    }
    context = _stored_rows(
        conn, "account", part.accounts, set(users["account_hull_id"].dropna()) - changed_accounts
    )
    all_accounts = (
        pd.concat([accounts, context[STORE_COLUMNS["account"]]], ignore_index=True)
        if len(context)
        else accounts
    )
    # parsed first: the evaluation locks its instance down, and a parse after it would build
    # a new one (15 ms of an incremental write)
    columns_read = account_columns_read(segments)
    new_users, seg_accounts = evaluate_segments(users, all_accounts, segments)
    new_accounts = seg_accounts[seg_accounts["hull_id"].isin(changed_accounts)]
    moving = moving_accounts(part.accounts, stored["account"], new_accounts, columns_read)
    moved = _moved_members(conn, part, moving, changed_users, all_accounts, segments)
    return new_users, new_accounts, moved, stored


def _moved_members(
    conn: duckdb.DuckDBPyConnection,
    part: ProfileStore,
    moving: set[str],
    changed_users: set[str],
    accounts: pd.DataFrame,
    segments: SegmentSettings,
) -> pd.DataFrame:
    """``hull_id`` and new ``segments`` of the stored users of the ``moving`` accounts, other
    than the ``changed_users``, whose membership the new ``accounts`` move."""
    nothing = pd.DataFrame({"hull_id": pd.Series([], dtype=object), "segments": []})
    if not moving:
        return nothing
    previous = _memberships(
        conn,
        "user",
        ("hull_id", "account_hull_id", "segments"),
        {"_moving_accounts": moving},
        "account_hull_id in (select hull_id::varchar from _moving_accounts)",
    )
    previous = previous[~previous["hull_id"].isin(changed_users)]
    if previous.empty:
        return nothing
    others = _stored_rows(conn, "user", part.users, set(previous["hull_id"]))
    evaluated, _ = evaluate_segments(others[STORE_COLUMNS["user"]], accounts, segments)
    before = dict(zip(previous["hull_id"], (list(s) for s in previous["segments"]), strict=True))
    mask = pd.Series(
        [
            list(s) != before.get(h)
            for h, s in zip(evaluated["hull_id"], evaluated["segments"], strict=True)
        ],
        index=evaluated.index,
        dtype=bool,
    )
    return evaluated.loc[mask, ["hull_id", "segments"]].reset_index(drop=True)


def _memberships(
    conn: duckdb.DuckDBPyConnection,
    kind: Kind,
    columns: tuple[str, ...],
    ids: dict[str, set[str]],
    where: str,
) -> pd.DataFrame:
    """``columns`` of the stored ``kind`` profiles matching ``where``, which reads the id sets
    ``ids`` as tables of ``hull_id`` (one scan; no attributes leave the store)."""
    if not _exists(conn, TABLES[kind]):
        return pd.DataFrame({c: pd.Series([], dtype=object) for c in columns})
    for name, values in ids.items():
        conn.register(name, pd.DataFrame({"hull_id": pd.Series(sorted(values), dtype=object)}))
    try:
        return fetch_where(conn, TABLES[kind], where, ", ".join(columns))
    finally:
        for name in ids:
            conn.unregister(name)


def _by_id(frame: pd.DataFrame) -> dict[str, object]:
    return dict(zip(frame["hull_id"].astype(str), frame["segments"], strict=True))


def _stored_rows(
    conn: duckdb.DuckDBPyConnection, kind: Kind, held: pd.DataFrame | None, ids: set[str]
) -> pd.DataFrame:
    """The stored rows of the ``kind`` profiles ``ids``: from ``held`` (the slice read on this
    connection, the same rows), and from the store for any it lacks."""
    found = (
        held[held["hull_id"].astype(str).isin(ids)]
        if held is not None and len(held)
        else empty_store(kind)
    )
    missing = ids - set(found["hull_id"].astype(str))
    if not missing:
        return found
    conn.register("_missing_ids", pd.DataFrame({"hull_id": sorted(missing)}, dtype=object))
    try:
        read = read_profiles(conn, kind, "hull_id in (select hull_id::varchar from _missing_ids)")
    finally:
        conn.unregister("_missing_ids")
    read = read[STORE_COLUMNS[kind]]
    return pd.concat([found, read], ignore_index=True) if len(found) else read


def update_segments(conn: duckdb.DuckDBPyConnection, moved: pd.DataFrame) -> None:
    """New ``segments`` for stored users whose account changed (their own row did not)."""
    if moved.empty:
        return
    conn.register("_moved", moved)
    try:
        run(
            conn,
            "update hull.users set segments = m.segments::varchar[] from _moved m"
            " where hull.users.hull_id = m.hull_id::varchar",
        )
    finally:
        conn.unregister("_moved")


def segment_counts(conn: duckdb.DuckDBPyConnection, table: str) -> dict[str, int]:
    """Profiles per segment, counted in SQL."""
    if not _exists(conn, table):
        return {}
    rows = conn.execute(
        f"select s, count(*) from (select unnest(segments) as s from {table}) group by s order by s"
    ).fetchall()
    return {str(name): int(n) for name, n in rows}


def row_count(conn: duckdb.DuckDBPyConnection, table: str) -> int:
    if not _exists(conn, table):
        return 0
    row = conn.execute(f"select count(*) from {table}").fetchall()[0]
    return int(row[0]) if row else 0
