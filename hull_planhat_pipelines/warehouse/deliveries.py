"""The delivery tables: ``planhat.deliveries``, ``planhat.delivery_fingerprints`` and
``planhat.api_responses``, every read and write of them in one place.

Writes are short transactions of their own (``connect``, write, commit, close): no connection
is ever held across an HTTP call. ``DeliveryJournal`` groups the intents and outcomes of
one-record requests so that a thousand records cost a few dozen transactions, not two thousand.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import duckdb
import numpy as np
import pandas as pd

from hull_planhat_pipelines.clients.delivery import OUTCOME_COLUMNS, RequestRows
from hull_planhat_pipelines.sync.batching import MAX_BULK_RECORDS
from hull_planhat_pipelines.sync.hull.batch import quote as literal
from hull_planhat_pipelines.sync.planhat.endusers import (
    EMAIL_KEY,
    EXTERNAL_ID_KEY,
    PLANHAT_RECORD,
)
from hull_planhat_pipelines.sync.planhat.fingerprints import (
    DELIVERED_STATUSES,
    empty_fingerprints,
    fresh_fingerprints,
    utc_timestamp,
)
from hull_planhat_pipelines.warehouse import (
    WarehouseBusy,
    append_table,
    column_schema,
    connect,
    delivery_lock,
    read_only,
    run,
    table_exists,
)
from hull_planhat_pipelines.warehouse.connection import (
    fetch_where,
    has_column,
    release,
    transaction,
    trimmed,
)

FINGERPRINTS = "planhat.delivery_fingerprints"
DELIVERIES = "planhat.deliveries"
API_RESPONSES = "planhat.api_responses"
DELIVERY_COLUMNS = [
    "run_id",
    "delivered_at",
    *OUTCOME_COLUMNS,
    "hull_id",
    "change",
    "fingerprint",
]
"""``fingerprint``: of the content this row is about (ties a later settlement to it)."""
IN_DOUBT = ("pending", "unknown")
"""Latest statuses of a record whose last call went out without an answer."""

FINGERPRINTS_DDL = f"""
create table if not exists {FINGERPRINTS} (
    target varchar, key varchar, fingerprint varchar, fields varchar,
    delivered_at timestamp with time zone, planhat_id varchar, hull_id varchar
);
alter table {FINGERPRINTS} add column if not exists planhat_id varchar;
alter table {FINGERPRINTS} add column if not exists hull_id varchar;
"""
FINGERPRINT_KEY = "delivery_fingerprints_key"
"""The unique index on ``(target, key)``: a checkpoint's upsert finds its few keys through it
instead of joining the whole table (the cost of a one-record commit stays flat as the table
grows)."""


# -- reads ----------------------------------------------------------------------------------------
def read_table(conn: duckdb.DuckDBPyConnection | None, table: str) -> pd.DataFrame | None:
    """Every row of ``table``; ``None`` while the table (or the warehouse) does not exist."""
    if conn is None or not table_exists(conn, *table.split(".")):
        return None
    return conn.execute(f"select * from {table}").fetchdf()


def read_rows(
    conn: duckdb.DuckDBPyConnection | None, table: str, where: str | None
) -> pd.DataFrame | None:
    """The rows of ``table`` matching ``where`` (None: all of them)."""
    if where is None or conn is None or not table_exists(conn, *table.split(".")):
        return read_table(conn, table)
    return fetch_where(conn, table, where)


def in_segment(names: Collection[str]) -> str:
    """SQL over a profile table: the profile is in one of the segments ``names``."""
    listed = "[" + ", ".join(literal(n) for n in names) + "]::varchar[]"
    return f"list_has_any(coalesce(segments, []), {listed})"


def read_rows_by_id(
    conn: duckdb.DuckDBPyConnection, table: str, ids: Iterable[object], column: str = "hull_id"
) -> pd.DataFrame:
    """The rows of ``table`` whose ``column`` is one of ``ids``, read by those ids (a frame
    joined in SQL): a caller that already holds the ids does not run their query again."""
    wanted = sorted({str(i) for i in ids if i is not None and not pd.isna(i)})
    conn.register("_wanted_ids", pd.DataFrame({"id": pd.Series(wanted, dtype=object)}))
    try:
        return fetch_where(conn, table, f"{column} in (select id::varchar from _wanted_ids)")
    finally:
        conn.unregister("_wanted_ids")


def fingerprints_table(
    conn: duckdb.DuckDBPyConnection | None, targets: Collection[str] | None = None
) -> pd.DataFrame:
    """What was last delivered per (target, key), for ``targets`` only when given (a payload
    reads its own target's rows, not every fingerprint kept); empty before any delivery."""
    if targets is None or conn is None or not table_exists(conn, *FINGERPRINTS.split(".")):
        frame = read_table(conn, FINGERPRINTS)
        return frame if frame is not None else empty_fingerprints()
    marks = ", ".join("?" for _ in targets)
    return conn.execute(
        f"select * from {FINGERPRINTS} where target in ({marks})", sorted(targets)
    ).fetchdf()


def _among_keys(keys: Collection[str] | None) -> tuple[str, list[object]]:
    """SQL narrowing a ``key`` column to ``keys`` (`` and ...``) with its parameter; nothing
    when ``keys`` is None (every key)."""
    if keys is None:
        return "", []
    return " and key in (select unnest(?))", [sorted(keys)]


def fingerprints_of_keys(
    conn: duckdb.DuckDBPyConnection | None, target: str, keys: Collection[str] | None
) -> pd.DataFrame:
    """``target``'s fingerprints of ``keys`` (None: all of them)."""
    if keys is None or conn is None or not table_exists(conn, *FINGERPRINTS.split(".")):
        return fingerprints_table(conn, [target])
    among, params = _among_keys(keys)
    return conn.execute(
        f"select * from {FINGERPRINTS} where target = ?{among}", [target, *params]
    ).fetchdf()


def latest_statuses(
    conn: duckdb.DuckDBPyConnection | None,
    target: str,
    *,
    among: Collection[str] = (),
    keys: Collection[str] | None = None,
) -> dict[str, str]:
    """The latest delivery status of each key of ``target`` (a ``pending`` intent and the
    outcome committed at the same instant: the outcome wins). ``among``: only keys that ever
    had one of these statuses (empty: every key); ``keys``: only these."""
    if conn is None or not table_exists(conn, "planhat", "deliveries"):
        return {}
    narrowed, keys_param = _among_keys(keys)
    where = "target = ?" + narrowed
    params: list[object] = [target, *keys_param]
    if among:
        marks = ", ".join("?" for _ in among)
        where += (
            " and key in (select key from planhat.deliveries "
            f"where target = ? and status in ({marks}))"
        )
        params += [target, *among]
    rows = run(
        conn,
        f"select key, status from {DELIVERIES} where {where} "
        "qualify row_number() over (partition by key "
        "order by delivered_at desc, (status = 'pending')) = 1",
        params,
    )
    return {str(key): str(status) for key, status in rows}


def in_doubt_keys(
    conn: duckdb.DuckDBPyConnection | None, target: str, keys: Collection[str] | None = None
) -> set[str]:
    """Keys (of ``keys`` only, when given) whose last call went out and was never answered
    (see ``IN_DOUBT``)."""
    latest = latest_statuses(conn, target, among=IN_DOUBT, keys=keys)
    return {k for k, s in latest.items() if s in IN_DOUBT}


def planhat_ids(
    conn: duckdb.DuckDBPyConnection | None, target: str, keys: Collection[str] | None = None
) -> dict[str, str]:
    """key -> the Planhat ``_id`` an earlier answer named, for ``target`` (``keys`` only, when
    given)."""
    if conn is None or not has_column(conn, FINGERPRINTS, "planhat_id"):
        return {}
    among, params = _among_keys(keys)
    rows = run(
        conn,
        f"select key, planhat_id from {FINGERPRINTS} where target = ? and planhat_id is not null"
        + among,
        [target, *params],
    )
    return {str(key): str(value) for key, value in rows}


def delivered_at(
    conn: duckdb.DuckDBPyConnection | None, target: str, among: Collection[str] | None = None
) -> dict[str, pd.Timestamp]:
    """key -> when its fingerprint last advanced, for ``target`` (the keys ``among`` only)."""
    if conn is None or not table_exists(conn, "planhat", "delivery_fingerprints"):
        return {}
    narrowed, params = _among_keys(among)
    rows = run(
        conn,
        f"select key, delivered_at from {FINGERPRINTS} where target = ?{narrowed}",
        [target, *params],
    )
    return {str(key): pd.Timestamp(value) for key, value in rows}


def settlement_history(
    conn: duckdb.DuckDBPyConnection | None, target: str, among: Collection[str] | None = None
) -> pd.DataFrame:
    """Every delivery row of the keys an answer left unsettled (unconfirmed, ignored, dropped),
    of the keys ``among`` only when given; empty when there are none (or the table predates
    fingerprints on its rows)."""
    if conn is None or not has_column(conn, DELIVERIES, "fingerprint"):
        return pd.DataFrame(columns=["key", "status", "fingerprint", "delivered_at"])
    narrowed, params = _among_keys(among)
    history = conn.execute(
        "select key, status, fingerprint, delivered_at from planhat.deliveries "
        "where target = ? and key in (select key from planhat.deliveries where target = ? "
        f"and status in ('unconfirmed', 'ignored', 'dropped'){narrowed})",
        [target, target, *params],
    ).fetchdf()
    history["delivered_at"] = pd.to_datetime(history["delivered_at"], utc=True)
    return history


def _values_under(prefix: str, keys: Collection[str]) -> list[str]:
    """The non-blank values of the ``keys`` under ``prefix``, without it."""
    return sorted({k[len(prefix) :] for k in keys if k.startswith(prefix)} - {""})


@dataclass(frozen=True)
class SnapshotKey:
    """A payload key a snapshot record answers to: ``prefix`` and its ``column``'s value (a
    blank one: none), trimmed and lower-cased when ``folded`` (emails, as ours are written:
    Planhat may keep an address as typed)."""

    prefix: str
    column: str
    folded: bool = False

    def sql(self) -> str:
        """SQL over a record: the key."""
        value = (
            f"lower(nullif(trim({self.column}), ''))"
            if self.folded
            else f"nullif({self.column}, '')"
        )
        return f"{literal(self.prefix)} || {value}" if self.prefix else value

    def among(self, keys: Collection[str]) -> tuple[str, list[object]]:
        """SQL over a record: it answers to one of ``keys`` under this key, tested on the
        column as stored (the key is then built for the records kept only: built for every
        record of a million-record snapshot, it cost most of the statement); and its
        parameter."""
        column = f"lower({trimmed(self.column)})" if self.folded else self.column
        return f"{column} in (select unnest(?::varchar[]))", [_values_under(self.prefix, keys)]


SNAPSHOT_KEYS: dict[str, tuple[SnapshotKey, ...]] = {
    "companies": (SnapshotKey("", "external_id"),),
    "endusers": (
        SnapshotKey(EXTERNAL_ID_KEY, "external_id"),
        SnapshotKey(EMAIL_KEY, "email", folded=True),
    ),
}
"""The payload keys a snapshot's record answers to, per target (over ``planhat_current``)."""


def _snapshot_keys_sql(
    target: str, written: str = "", among: Collection[str] | None = None
) -> tuple[str, list[object]]:
    """SQL: ``key`` per snapshot record and key it answers to (``written``: a second column,
    ``written_at``, of that SQL over the record), of the keys ``among`` only when given; and
    its parameters."""
    table = f"planhat_current.{target}"  # the latest snapshot
    extra = f", {written} as written_at" if written else ""
    parts, params = [], []
    for key in SNAPSHOT_KEYS[target]:
        where = ""
        if among is not None:
            condition, values = key.among(among)
            where, params = f" where {condition}", [*params, *values]
        parts.append(f"select {key.sql()} as key{extra} from {table}{where}")
    return " union all ".join(parts), params


def snapshot_keys(
    conn: duckdb.DuckDBPyConnection, target: str, among: Collection[str] | None = None
) -> tuple[set[str], pd.Timestamp | None]:
    """Payload keys the latest Planhat snapshot holds (of the keys ``among`` only, when given),
    and when it was taken."""
    table = f"planhat_current.{target}"  # the latest snapshot
    if not table_exists(conn, *table.split(".")):
        return set(), None
    at = _snapshot_taken(conn, table)
    keys, params = _snapshot_keys_sql(target, among=among)
    found = conn.execute(f"select key from ({keys}) where key is not null", params)
    return {str(key) for (key,) in found.fetchall()}, at


def _snapshot_taken(conn: duckdb.DuckDBPyConnection, table: str) -> pd.Timestamp | None:
    """When the latest snapshot ``table`` (which exists) was taken; None while it is empty."""
    row = conn.execute(f"select max(_fetched_at) from {table}").fetchone()
    return utc_timestamp(row[0]) if row and row[0] is not None else None


def snapshot_writes(
    conn: duckdb.DuckDBPyConnection, target: str, among: Collection[str]
) -> dict[str, pd.Timestamp | None]:
    """Per key of ``among`` the latest snapshot holds: when Planhat last wrote a record
    answering to it (its ``updatedAt``, which every write bumps; None when no such record
    says). A key's presence alone proves nothing about an update: the record held it before."""
    table = f"planhat_current.{target}"
    if not among or not table_exists(conn, *table.split(".")):
        return {}
    written = "updated_at" if has_column(conn, table, "updated_at") else "null::timestamptz"
    keys, params = _snapshot_keys_sql(target, written, among)
    rows = conn.execute(
        f"select key, max(written_at) from ({keys}) where key is not null group by key", params
    ).fetchall()
    return {str(key): None if at is None else utc_timestamp(at) for key, at in rows}


MOVED_COLUMNS = ["hull_id", "key", "planhat_id", "other_keys"]
"""What ``held_under_other_keys`` and ``returned_to_keys`` answer: per user, its payload's
``key``, the ``planhat_id`` of its enduser, and the ``other_keys`` that enduser was sent under
(the content Planhat holds came with them)."""


def _enduser_keys(alias: str) -> tuple[str, str]:
    """SQL: the keys a snapshot enduser ``alias`` answers to, as ours are written (emails
    trimmed and lower-cased, as the store keeps them)."""
    return (
        f"{literal(EXTERNAL_ID_KEY)} || nullif(trim({alias}.external_id), '')",
        f"{literal(EMAIL_KEY)} || lower(nullif(trim({alias}.email), ''))",
    )


_SNAPSHOT_KEYS = "{} as k1, {} as k2".format(*_enduser_keys("e"))
"""``_enduser_keys`` of a snapshot enduser ``e``, as columns ``k1`` and ``k2``."""
_DELIVERED = ", ".join(literal(s) for s in sorted(DELIVERED_STATUSES))
_COUNTED = ", ".join(literal(s) for s in sorted({*DELIVERED_STATUSES, "unconfirmed"}))
"""A delivery Planhat took, or may have (``unconfirmed``): for deciding to send again by
``_id``, one send too many is harmless, one too few leaves a stale value."""


def _held_by_one_profile(table: str) -> str:
    """SQL over ``h`` (a row of ``table``): no two profiles hold its enduser (one that took
    the enduser's email since holds it too: it names neither)."""
    return (
        f"h.planhat_id not in (select substr(v, {len(PLANHAT_RECORD) + 1}) from"
        " (select hull_id, unnest(anonymous_ids) as v from hull.users) where v in"
        f" (select {literal(PLANHAT_RECORD)} || planhat_id from {table})"
        " group by v having count(distinct hull_id) > 1)"
    )


_TEMP_TABLE = re.compile(r"create temp table (\w+)")


def _moved(
    conn: duckdb.DuckDBPyConnection | None, candidates: pd.DataFrame, *statements: str
) -> pd.DataFrame:
    """``statements`` (over ``_candidates``; the last a select of ``MOVED_COLUMNS``) run when
    every table they read exists; their temporary tables are dropped after."""
    found = pd.DataFrame({c: pd.Series([], dtype=object) for c in MOVED_COLUMNS})
    if (
        conn is None
        or candidates.empty
        or not table_exists(conn, "planhat_current", "endusers")
        or not table_exists(conn, *FINGERPRINTS.split("."))
        or not table_exists(conn, *DELIVERIES.split("."))
        or not table_exists(conn, "hull", "users")
    ):
        return found
    conn.register("_candidates", candidates[["hull_id", "key", "planhat_id"]].astype(str))
    try:
        *setup, select = statements
        for statement in setup:
            conn.execute(statement)
        rows = conn.execute(select).fetchdf()
    finally:
        conn.unregister("_candidates")
        for table in _TEMP_TABLE.findall(" ".join(statements)):
            conn.execute(f"drop table if exists {table}")
    if rows.empty:
        return found
    rows["other_keys"] = [sorted(str(k) for k in keys) for keys in rows["other_keys"]]
    return rows[MOVED_COLUMNS].astype(object)


def held_under_other_keys(
    conn: duckdb.DuckDBPyConnection | None, candidates: pd.DataFrame
) -> pd.DataFrame:
    """Of ``candidates`` (``hull_id``, the ``key`` its payload is sent under, the
    ``planhat_id`` of the Planhat enduser it was built from): those whose key we never
    delivered for this profile while the latest snapshot holds that enduser under a key we
    delivered for it, and no other profile holds its id (the profile's email or external id
    changed in Hull since). The key may have been delivered for another profile: a person
    given a colleague's old address still has an enduser of its own. Rows of
    ``MOVED_COLUMNS``."""
    ours = (
        f"select 1 from {DELIVERIES} d where d.target = 'endusers'"
        f" and d.status in ({_DELIVERED}) and d.hull_id = c.hull_id and d.key"
    )
    return _moved(
        conn,
        candidates,
        # the few whose key is new to them while Planhat holds their enduser under one of ours
        f"create temp table _held as select c.*, {_SNAPSHOT_KEYS} from _candidates c"
        " join planhat_current.endusers e on e._id = c.planhat_id"
        f" where not exists ({ours} = c.key)",
        # that key delivered for this profile; the id held by no other profile
        "select h.hull_id, h.key, h.planhat_id, list(distinct d.key) as other_keys"
        f" from _held h join {DELIVERIES} d on d.target = 'endusers'"
        f" and d.hull_id = h.hull_id and d.key in (h.k1, h.k2) and d.status in ({_DELIVERED})"
        f" where {_held_by_one_profile('_held')} group by all order by h.hull_id",
    )


def enduser_snapshot_keys(
    conn: duckdb.DuckDBPyConnection | None, planhat_ids: Collection[str]
) -> dict[str, set[str]]:
    """The keys each of ``planhat_ids``' endusers answers to in the latest snapshot (its email
    and external id, as ours are written); read for those endusers only."""
    wanted = sorted({str(i) for i in planhat_ids})
    if conn is None or not wanted or not table_exists(conn, "planhat_current", "endusers"):
        return {}
    rows = conn.execute(
        f"select e._id, {_SNAPSHOT_KEYS} from planhat_current.endusers e"
        " where e._id in (select unnest(?))",
        [wanted],
    ).fetchall()
    return {str(i): {k for k in (k1, k2) if k is not None} for i, k1, k2 in rows}


def endusers_answering(
    conn: duckdb.DuckDBPyConnection | None, keys: Collection[str]
) -> dict[str, set[str]]:
    """Per profile holding a Planhat enduser (its ``planhat:<_id>`` anonymous id; an enduser
    two profiles hold is left out) that the latest snapshot shows answering to one of
    ``keys``: every key that enduser answers to. Read for those endusers only."""
    wanted = sorted({str(k) for k in keys})
    if (
        conn is None
        or not wanted
        or not table_exists(conn, "planhat_current", "endusers")
        or not table_exists(conn, "hull", "users")
    ):
        return {}
    # tested on the columns as stored: the keys are built for the endusers that answer only
    rows = conn.execute(
        f"with hit as (select e._id, {_SNAPSHOT_KEYS} from planhat_current.endusers e"
        f" where {trimmed('e.external_id')} in (select unnest(?::varchar[]))"
        f" or lower({trimmed('e.email')}) in (select unnest(?::varchar[]))),"
        " holder as (select substr(v, ?) as planhat_id, min(hull_id) as hull_id"
        " from (select hull_id, unnest(anonymous_ids) as v from hull.users)"
        " where v in (select ? || _id from hit) group by v having count(distinct hull_id) = 1)"
        " select holder.hull_id, hit.k1, hit.k2 from hit join holder on holder.planhat_id = hit._id",
        [
            _values_under(EXTERNAL_ID_KEY, wanted),
            _values_under(EMAIL_KEY, wanted),
            len(PLANHAT_RECORD) + 1,
            PLANHAT_RECORD,
        ],
    ).fetchall()
    out: dict[str, set[str]] = {}
    for hull_id, k1, k2 in rows:
        out.setdefault(str(hull_id), set()).update(k for k in (k1, k2) if k is not None)
    return out


def held_in_other_companies(
    conn: duckdb.DuckDBPyConnection | None, candidates: pd.DataFrame
) -> dict[str, str]:
    """Of ``candidates`` (``hull_id``, ``key``, ``planhat_id`` as for
    ``held_under_other_keys``, and the ``company_external_id`` its payload names): the
    ``planhat_id`` per ``hull_id`` of those whose enduser the latest snapshot holds under this
    same key in another company, while the payload's company holds none under that key, and
    no other profile holds it (the person moved to another company). Planhat matches an email
    only while it is unique, and perhaps within the item's company: addressed by ``_id``, the
    upsert moves that enduser instead of adding one. Where the new company has an enduser
    under the key already, the plain upsert updates that one."""
    if (
        conn is None
        or candidates.empty
        or not table_exists(conn, "planhat_current", "endusers")
        or not table_exists(conn, "planhat_current", "companies")
        or not table_exists(conn, "hull", "users")
    ):
        return {}
    columns = ["hull_id", "key", "planhat_id", "company_external_id"]
    conn.register("_movers", candidates[columns].astype(str))
    try:
        rows = conn.execute(
            # the few held elsewhere first: only they are looked for among the profiles
            "create temp table _moving as select * from (select m.*, c.external_id as held,"
            f" {_SNAPSHOT_KEYS} from _movers m"
            " join planhat_current.endusers e on e._id = m.planhat_id"
            " left join planhat_current.companies c on c._id = e.company_id)"
            " where key in (k1, k2) and held is distinct from company_external_id;"
            # none is in the new company under that key already (the upsert updates that one)
            "select h.hull_id, h.planhat_id from _moving h where not exists (select 1 from"
            " planhat_current.endusers o join planhat_current.companies oc"
            " on oc._id = o.company_id where oc.external_id = h.company_external_id"
            f" and h.key in ({', '.join(_enduser_keys('o'))}))"
            f" and {_held_by_one_profile('_moving')} order by h.hull_id"
        ).fetchall()
    finally:
        conn.unregister("_movers")
        conn.execute("drop table if exists _moving")
    return {str(hull_id): str(planhat_id) for hull_id, planhat_id in rows}


def returned_to_keys(
    conn: duckdb.DuckDBPyConnection | None, candidates: pd.DataFrame
) -> pd.DataFrame:
    """Of ``candidates`` (as for ``held_under_other_keys``): those whose key has a fingerprint,
    while deliveries to this profile or to its enduser under other keys were made after the
    profile's own last delivery of the key (after the fingerprint when it has none; the
    fingerprint may be another profile's, that had the key before or since: a person taking
    back the address a colleague held meanwhile; the deliveries are read for the keys whose
    fingerprint names another profile, or none). The email or external id changed, then
    changed back: Planhat's enduser holds those other keys' content now, so "unchanged"
    against the key's own fingerprint would leave it there.

    Only where the latest snapshot holds the profile's own enduser, under this key or under one
    delivered to this profile or enduser (not edited to someone else's since), and no other
    profile holds it. A delivery counts when Planhat took it or may have (``unconfirmed``).
    Rows of ``MOVED_COLUMNS``; none from a table whose fingerprints have no delivery time."""
    if (
        conn is not None
        and table_exists(conn, *FINGERPRINTS.split("."))
        and not has_column(conn, FINGERPRINTS, "delivered_at")
    ):
        conn = None
    sender = (
        "f.hull_id"
        if conn is not None and has_column(conn, FINGERPRINTS, "hull_id")
        else "null::varchar"
    )
    later = (
        "select h.hull_id, d.key from _back h join {deliveries} d on d.{column} = h.{column}"
        " where d.target = 'endusers' and d.status in ({counted}) and d.key <> h.key"
        " and d.delivered_at > h.key_at"
    )
    mine = (
        "select 1 from {deliveries} d where d.{column} = h.{column} and d.target = 'endusers'"
        " and d.status in ({counted}) and d.key in (h.k1, h.k2)"
    )

    def both(template: str, joined: str) -> str:
        return joined.join(
            template.format(deliveries=DELIVERIES, column=column, counted=_COUNTED)
            for column in ("hull_id", "planhat_id")
        )

    return _moved(
        conn,
        candidates,
        # keys whose fingerprint is older than a delivery to the profile or to its enduser
        # under another key (two equi-joins, not one "or"); nearly always none
        "create temp table _back as select c.*, f.delivered_at as key_at,"
        f" {sender} is distinct from c.hull_id as foreign_key from _candidates c"
        f" join {FINGERPRINTS} f on f.target = 'endusers' and f.key = c.key",
        # a fingerprint another profile earned (a colleague had the address meanwhile), or one
        # from before fingerprints named their profile: the profile's own last delivery of the
        # key is what its enduser left behind; read for those few keys only (the time filter
        # of the joins below prunes the history)
        "update _back set key_at = o.at from (select d.hull_id, d.key,"
        f" max(d.delivered_at) as at from {DELIVERIES} d semi join (select hull_id, key"
        " from _back where foreign_key) b on b.hull_id = d.hull_id and b.key = d.key"
        f" where d.target = 'endusers' and d.status in ({_COUNTED}) group by all) o"
        " where o.hull_id = _back.hull_id and o.key = _back.key and o.at < _back.key_at",
        "create temp table _later as select b.* exclude (foreign_key), l.other_keys"
        f" from _back b join (select hull_id, list(distinct key) as other_keys"
        f" from ({both(later, ' union ')}) group by hull_id) l using (hull_id)",
        # the snapshot read for those only: its enduser under this key or one of theirs
        "select h.hull_id, h.key, h.planhat_id, h.other_keys from (select l.*,"
        f" {_SNAPSHOT_KEYS} from _later l join planhat_current.endusers e"
        " on e._id = l.planhat_id) h"
        f" where (h.key in (h.k1, h.k2) or exists ({both(mine, ') or exists (')}))"
        f" and {_held_by_one_profile('_later')} order by h.hull_id",
    )


def unseen_by_snapshot(database: str, target: str, keys: list[object]) -> int:
    """How many of ``keys`` (records a delivery matched, by their payload key) the latest
    snapshot does not list; all of them while there is no snapshot."""
    wanted = sorted({str(k) for k in keys})
    if not wanted:
        return 0
    with read_only(database) as conn:
        if conn is None or not table_exists(conn, "planhat_current", target):
            return len(wanted)
        keys, params = _snapshot_keys_sql(target, among=wanted)
        (listed,) = conn.execute(f"select count(distinct key) from ({keys})", params).fetchone()
    return len(wanted) - int(listed)


KNOWN_COMPANY_SOURCES = {
    FINGERPRINTS: f"select key from {FINGERPRINTS} where target = 'companies'",
    "planhat.company_payloads": "select key from planhat.company_payloads",
    "planhat_current.companies": (
        "select external_id from planhat_current.companies where external_id is not null"
    ),
}
"""Where the external ids of companies Planhat has (latest snapshot), was sent before, or is
being sent now are read from (table -> query)."""


def known_company_ids(conn: duckdb.DuckDBPyConnection | None) -> set[str]:
    """External ids Planhat has (latest snapshot) or that are being sent now."""
    known: set[str] = set()
    for table, sql in KNOWN_COMPANY_SOURCES.items():
        if table != FINGERPRINTS and conn is not None and table_exists(conn, *table.split(".")):
            known |= {str(row[0]) for row in conn.execute(sql).fetchall() if row[0] is not None}
    return known


def known_companies(conn: duckdb.DuckDBPyConnection | None, fingerprints: pd.DataFrame) -> set[str]:
    """External ids Planhat has (latest snapshot), was sent before, or is being sent now."""
    known = set(fingerprints.loc[fingerprints["target"] == "companies", "key"].astype(str))
    return known | known_company_ids(conn)


def vanished_companies(
    conn: duckdb.DuckDBPyConnection | None, fingerprints: pd.DataFrame
) -> set[str]:
    """Companies we delivered that a Planhat snapshot taken after the delivery no longer holds
    (deleted in Planhat): sent again, recreated, and their endusers with them."""
    if conn is None or fingerprints.empty:
        return set()
    keys, at = snapshot_keys(conn, "companies")
    if at is None:
        return set()
    ours = fingerprints[fingerprints["target"] == "companies"]
    before = pd.to_datetime(ours["delivered_at"], utc=True) < at
    return {str(k) for k in ours.loc[before.to_numpy(), "key"] if str(k) not in keys}


def pending_keys(database: str, target: str, keys: Collection[str]) -> set[str]:
    """The ``keys`` of ``target`` whose latest row is a ``pending`` intent: posted by a run
    that stopped before reading the answer (every item of an analytics target has one first:
    reading them all would cost every item ever sent)."""
    with read_only(database) as conn:
        latest = latest_statuses(conn, target, among=("pending",), keys=keys)
    return {key for key, status in latest.items() if status == "pending"}


@dataclass(frozen=True)
class SettlementInputs:
    """What settling ``target``'s unsettled items needs, read on one connection: their
    delivery rows, the keys of the latest snapshot and when it was taken, and when each
    company's fingerprint last advanced."""

    history: pd.DataFrame
    present: set[str]
    snapshot_at: pd.Timestamp | None
    company_at: dict[str, pd.Timestamp]
    written_at: dict[str, pd.Timestamp | None] = field(default_factory=dict)
    """Per present key, when Planhat last wrote a record answering to it (``snapshot_writes``)."""


def settlement_inputs(
    database: str, target: str, keys: Collection[str], companies: Collection[str]
) -> SettlementInputs | None:
    """``SettlementInputs`` of the payload ``keys`` of ``target`` about to be sent (settling
    looks at those alone), ``companies`` being their companies' external ids; ``None`` when
    none of them is unsettled. What the snapshot and the company fingerprints hold is read for
    those keys only, not for every record Planhat has."""
    with read_only(database) as conn:
        history = settlement_history(conn, target, among=keys)
        if conn is None or history.empty:
            return None
        unsettled = set(history["key"].astype(str))
        table = f"planhat_current.{target}"
        taken = _snapshot_taken(conn, table) if table_exists(conn, *table.split(".")) else None
        written_at = snapshot_writes(conn, target, among=unsettled)  # the keys present too
        company_at = delivered_at(conn, "companies", among=companies)
    return SettlementInputs(history, set(written_at), taken, company_at, written_at)


def read_tables(database: str, tables: Collection[str]) -> dict[str, pd.DataFrame | None]:
    """Each of ``tables`` whole (``None`` while it does not exist), on one connection."""
    with read_only(database) as conn:
        return {table: read_table(conn, table) for table in tables}


def table_column_schema(database: str, schema: str, table: str) -> dict[str, object]:
    """``column_schema`` of a table as written; empty while the warehouse does not exist."""
    with read_only(database) as conn:
        return column_schema(conn, schema, table) if conn is not None else {}


# -- rows -----------------------------------------------------------------------------------------
_PAYLOAD_FIELDS = ("hull_id", "change", "fingerprint")
"""``planhat.deliveries`` columns taken from the payloads (the rest from the outcomes)."""


def delivery_rows(
    outcomes: pd.DataFrame, payloads: pd.DataFrame, run_id: str, now: dt.datetime
) -> pd.DataFrame:
    """``planhat.deliveries`` rows: the outcomes beside their payloads' hull id, change and
    fingerprint, typed the same whatever the outcomes hold.

    Built column by column into one frame: a one-record destination builds one a group of
    records, a few hundred a run, and setting columns on a copied frame cost twice as much."""
    index, size = outcomes.index, len(outcomes)
    absent = np.full(size, None, dtype=object)
    columns: dict[str, Any] = {}
    for column in DELIVERY_COLUMNS:
        if column == "run_id":
            values: Any = np.full(size, run_id, dtype=object)
        elif column == "delivered_at":
            values = pd.Series(pd.Timestamp(now), index=index)
        elif column in _PAYLOAD_FIELDS:
            values = payloads[column].values if column in payloads else absent
        else:
            values = outcomes[column].values if column in outcomes else absent
        if column in ("request", "attempts", "batch"):
            numbers = pd.to_numeric(pd.Series(values, index=index), errors="coerce")
            columns[column] = numbers.astype("Int64")
        elif column == "delivered_at":
            columns[column] = pd.to_datetime(values, utc=True)
        else:
            columns[column] = pd.array(values, dtype="string")
    return pd.DataFrame(columns, index=index)


def status_rows(
    target: str, records: pd.DataFrame, status: str, error: str | None = None
) -> pd.DataFrame:
    """Outcome rows giving every record of ``records`` the same status (indexed like them)."""
    return pd.DataFrame(
        {
            "target": target,
            "key": records["key"].astype(str).values,
            "status": status,
            "error": error,
        },
        index=records.index,
    ).reindex(columns=OUTCOME_COLUMNS)


# -- writes ---------------------------------------------------------------------------------------
def _ensure_tables(conn: duckdb.DuckDBPyConnection) -> None:
    run(conn, "create schema if not exists planhat")
    for statement in filter(str.strip, FINGERPRINTS_DDL.split(";")):
        run(conn, statement)
    _ensure_fingerprint_key(conn)
    if table_exists(conn, "planhat", "deliveries"):  # tables older than the column
        run(conn, f"alter table {DELIVERIES} add column if not exists fingerprint varchar")


def _ensure_fingerprint_key(conn: duckdb.DuckDBPyConnection) -> None:
    """``FINGERPRINT_KEY``, created once. A table written before the index may hold a key
    twice (a race the index now refuses): the row of its latest delivery is kept, with the
    latest Planhat id any of its rows knew (the old upsert kept an id no answer named; losing
    it would turn the next update into a read-back or a duplicate create)."""
    schema = FINGERPRINTS.split(".")[0]
    if run(
        conn,
        "select 1 from duckdb_indexes() where schema_name = ? and index_name = ?",
        [schema, FINGERPRINT_KEY],
    ):
        return
    keyed = "target is not null and key is not null"  # the index accepts NULLs more than once
    doubled = run(
        conn,
        f"select count(*) - count(distinct (target, key)) from {FINGERPRINTS} where {keyed}",
    )[0][0]
    if doubled:
        run(
            conn,
            f"update {FINGERPRINTS} f set planhat_id = k.known from (select target, key,"
            " arg_max(planhat_id, delivered_at) filter (where planhat_id is not null) as known"
            f" from {FINGERPRINTS} where {keyed} group by target, key having count(*) > 1) k"
            " where f.target = k.target and f.key = k.key and f.planhat_id is null"
            " and k.known is not null",
        )
        run(
            conn,
            f"delete from {FINGERPRINTS} where {keyed} and rowid not in (select rowid from"
            f" {FINGERPRINTS} where {keyed} qualify row_number() over (partition by target, key"
            " order by delivered_at desc nulls last, rowid desc) = 1)",
        )
    run(
        conn,
        f"create unique index if not exists {FINGERPRINT_KEY} on {FINGERPRINTS} (target, key)",
    )


REPLACED_FROM_ROWS = 1_000
"""Fresh fingerprints from which ``_upsert_fingerprints`` replaces the stored rows (deleted,
then inserted) instead of updating them in place. An update rewrites, at the next checkpoint,
every row group it touched, and a bulk's keys are spread over all of them: 4,284 endusers in a
1.1-million-row table, six rounds each, took 0.4 to 0.6 s and a 1.2 to 2.6 s checkpoint in
place (the 1% pass at scale 1,000 spent 1.7 s on that commit), 0.4 s and a 0.1 s checkpoint
replaced (1.4 and 1.9 s in two rounds, when it compacted the deletions). Finding the stored
rows is a scan, though, where the update finds them through ``FINGERPRINT_KEY``: a one-record
destination commits a few dozen records at a time (30 updates: 22 ms a commit in place, 94 ms
replaced), and one rewrite at the end of its step costs less than a scan for every group."""


def _upsert_fingerprints(conn: duckdb.DuckDBPyConnection, fresh: pd.DataFrame) -> None:
    """Each key inserted, or its row given the fresh values, keeping its ``_id`` when the
    answer named none (the profile is the latest sender's): updated in place through
    ``FINGERPRINT_KEY``, or replaced from ``REPLACED_FROM_ROWS`` rows."""
    if "hull_id" not in fresh.columns:
        fresh = fresh.assign(hull_id=None)
    conn.register(
        "_fresh",
        fresh.astype({c: "string" for c in ("target", "key", "fingerprint", "fields", "hull_id")}),
    )
    try:
        if len(fresh) >= REPLACED_FROM_ROWS:
            _replace_fingerprints(conn)
            return
        run(
            conn,
            f"insert into {FINGERPRINTS} by name select f.target, f.key, f.fingerprint, "
            "f.fields, f.delivered_at, f.planhat_id, f.hull_id from _fresh f "
            "on conflict (target, key) do update set fingerprint = excluded.fingerprint, "
            "fields = excluded.fields, delivered_at = excluded.delivered_at, "
            "planhat_id = coalesce(excluded.planhat_id, planhat_id), hull_id = excluded.hull_id",
        )
    finally:
        conn.unregister("_fresh")


def _replace_fingerprints(conn: duckdb.DuckDBPyConnection) -> None:
    """The stored rows of the keys of ``_fresh`` deleted (found by row id: their ``_id`` is
    kept aside), then ``_fresh`` inserted; inside the caller's transaction."""
    stored = "temp._stored_fingerprints"
    run(
        conn,
        f"create or replace temp table {stored} as select s.rowid as r, s.target, s.key,"
        f" s.planhat_id from {FINGERPRINTS} s semi join _fresh f"
        " on s.target = f.target and s.key = f.key",
    )
    try:
        run(conn, f"delete from {FINGERPRINTS} where rowid in (select r from {stored})")
        run(
            conn,
            f"insert into {FINGERPRINTS} by name select f.target, f.key, f.fingerprint,"
            " f.fields, f.delivered_at, coalesce(f.planhat_id, s.planhat_id) as planhat_id,"
            f" f.hull_id from _fresh f left join {stored} s"
            " on s.target = f.target and s.key = f.key",
        )
    finally:
        run(conn, f"drop table if exists {stored}")


def commit_checkpoint(
    database: str,
    deliveries: pd.DataFrame,
    fresh: pd.DataFrame,
    *,
    existing: bool = False,
    checkpoint: bool = True,
) -> None:
    """Delivery rows and the fingerprints they earned, in one short transaction.

    Fingerprints are upserted by ``(target, key)``; a record whose answer named no Planhat
    ``_id`` keeps the one stored before. Opened and closed here: no connection is ever held
    across an HTTP call. ``existing=True``: every delivery table exists already (the caller
    committed rows before), so neither the set-up nor the catalog is asked again.
    ``checkpoint=False``: the commit stays in the write-ahead log when the file is released
    (durable all the same); a later release checkpoints it."""
    if deliveries.empty and fresh.empty:
        return
    conn = connect(database)
    try:
        if not existing:
            _ensure_tables(conn)
        with transaction(conn):
            append_table(conn, DELIVERIES, deliveries, exists=existing)
            if not fresh.empty:
                _upsert_fingerprints(conn, fresh)
    finally:
        release(conn, checkpoint=checkpoint)


def _framed(rows: pd.DataFrame | RequestRows) -> pd.DataFrame:
    """``deliver`` hands a request's rows unframed; a frame is taken as it is."""
    return rows.frame() if isinstance(rows, RequestRows) else rows


def make_checkpoint(
    database: str,
    records: pd.DataFrame,
    run_id: str,
    *,
    delivered: frozenset[str] = DELIVERED_STATUSES,
) -> Callable[[pd.DataFrame | RequestRows], None]:
    """The ``deliver`` checkpoint of one target: commit each request's rows as they come (the
    tables set up by the first commit, not again by each)."""
    ready = False

    def checkpoint(request: pd.DataFrame | RequestRows) -> None:
        nonlocal ready
        outcomes = _framed(request)
        now = dt.datetime.now(dt.UTC)
        part = records.loc[outcomes.index]
        rows = delivery_rows(outcomes, part, run_id, now)
        fresh = fresh_fingerprints(outcomes, part, now, delivered=delivered)
        commit_checkpoint(database, rows, fresh, existing=ready)
        ready = ready or not rows.empty

    return checkpoint


def make_intent(
    database: str, records: pd.DataFrame, run_id: str
) -> Callable[[pd.DataFrame | RequestRows], None]:
    """The ``deliver`` intent of one target: ``pending`` rows committed before a post."""
    ready = False

    def intent(request: pd.DataFrame | RequestRows) -> None:
        nonlocal ready
        pending = _framed(request)
        part = records.iloc[pending.index]
        rows = delivery_rows(pending.set_axis(part.index), part, run_id, dt.datetime.now(dt.UTC))
        commit_checkpoint(database, rows, pd.DataFrame(), existing=ready)
        ready = ready or not rows.empty

    return intent


def commit_statuses(
    database: str,
    target: str,
    records: pd.DataFrame,
    status: str,
    run_id: str,
    *,
    error: str | None = None,
    delivered: Collection[str] = DELIVERED_STATUSES,
) -> pd.DataFrame:
    """Give ``records`` one status (their fingerprints advance when it counts as delivered),
    committed at once; returns the outcome rows."""
    outcomes = status_rows(target, records, status, error)
    now = dt.datetime.now(dt.UTC)
    commit_checkpoint(
        database,
        delivery_rows(outcomes, records, run_id, now),
        fresh_fingerprints(outcomes, records, now, delivered=delivered),
    )
    return outcomes


JOURNAL_GROUP_SECONDS = 1.0
"""How much sending a one-record destination's journal group covers when Planhat (and its
quota) let more than ``journal_every`` records out a second (``DeliveryJournal``)."""
CHECKPOINT_EVERY = 8
"""A journal's commits between two checkpoints of the warehouse file (its last commit always
checkpoints). A checkpoint each time a commit released the file cost about 7 ms of a group's
40 ms at scale; left in the write-ahead log (durable all the same), a few commits cost the next
opener about a millisecond to replay."""


@dataclass
class DeliveryJournal:
    """Intents and outcomes of a one-record-per-request delivery, ``every`` records a
    transaction instead of two transactions a record.

    Before the first request of each group of ``every`` records, the whole group is committed
    ``pending`` (with the outcomes of the group before it, in the same transaction): an intent
    is durable before its request is sent. Outcomes are kept in memory until the group ends,
    then committed. A process killed mid-group leaves the group's records ``pending``: the next
    run treats them as in doubt (a create is read back before it is repeated; an update, being
    idempotent, is sent again), so nothing is duplicated and nothing is lost.

    ``intents=False``: requests that may be repeated (updates): outcomes only, ``every`` a
    transaction; a crash sends at most that many updates again.

    ``group_seconds``: a commit costs a transaction and the file taken and released (tens of
    milliseconds on a large warehouse), as long as sending 50 records takes when Planhat
    answers in a millisecond. Each group then covers as many records as the last one sent in
    ``group_seconds``, never fewer than ``every``, never more than ``largest`` nor than the
    quota (``requests_per_minute``) lets out in ``group_seconds``: a throttled delivery keeps
    groups of ``every`` (Planhat's 200 a minute: 3 a second), a fast one commits about once a
    ``group_seconds``, and a crash leaves about that much sending in doubt. ``None``, or
    ``every=1``: groups of ``every``. Pacing is for one-record requests: a bulk destination
    journals with ``every=1``, each request committed at its answer.
    """

    database: str
    target: str
    records: pd.DataFrame
    run_id: str
    every: int
    intents: bool = True
    delivered: frozenset[str] = DELIVERED_STATUSES
    group_seconds: float | None = None
    requests_per_minute: float | None = None
    """The client's quota: a group covers no more than it lets out in ``group_seconds``."""
    largest: int = MAX_BULK_RECORDS
    clock: Callable[[], float] = time.monotonic
    transactions: int = 0
    _covered: int = 0
    _outcomes: list[pd.DataFrame | RequestRows] = field(default_factory=list)
    _held: int = 0
    _ready: bool = False
    _unchecked: int = 0
    """Commits released without a checkpoint since the last one (``CHECKPOINT_EVERY``)."""
    _size: int = 0
    """Records of the next group (``group_seconds``)."""
    _since: float = 0.0
    """When the last commit ended: the records held since were sent after it."""

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"a journal groups at least one record, not {self.every}")
        self._size = self.every
        self._since = self.clock()
        if not self.records.index.equals(pd.RangeIndex(len(self.records))):
            # ``deliver`` names an intent's records by position, a checkpoint's by label
            raise ValueError("a journal's records are indexed 0..n-1 (reset_index first)")

    def _position(self, index: object) -> int:
        return int(self.records.index.get_loc(index))

    def _pace(self) -> None:
        """Size the next group by how fast the held records went out (``group_seconds``)."""
        if self.group_seconds is None or self.every == 1 or not self._held:
            return  # one record a group stays so: a create that cannot be read back needs it
        largest = self.largest
        if self.requests_per_minute is not None:
            # the quota's window lets a burst out at once: a fast group says nothing of the next
            largest = min(largest, int(self.requests_per_minute * self.group_seconds / 60))
        seconds = self.clock() - self._since
        sent = self._held * self.group_seconds / seconds if seconds > 0 else largest
        self._size = max(self.every, min(largest, round(sent)))

    def _pending(self, start: int) -> pd.DataFrame:
        """The ``pending`` rows of the group starting at ``start``; covers it."""
        group = self.records.iloc[start : start + self._size]
        self._covered = start + len(group)
        return status_rows(self.target, group, "pending")

    def _held_frames(self) -> list[pd.DataFrame]:
        """The held outcomes as frames: consecutive requests of one delivery framed at once,
        from its rows as they are now (a group costs one frame, not one a request)."""
        frames: list[pd.DataFrame] = []
        run: RequestRows | None = None
        for held in [*self._outcomes, None]:
            if (
                isinstance(held, RequestRows)
                and run is not None
                and held.build is run.build
                and held.positions.start == run.positions.stop
            ):
                run = RequestRows(range(run.positions.start, held.positions.stop), run.build)
                continue
            if run is not None:
                frames.append(run.frame())
            run = held if isinstance(held, RequestRows) else None
            if isinstance(held, pd.DataFrame):
                frames.append(held)
        return [f for f in frames if not f.empty]

    def _commit(self, next_group: int | None, *, last: bool = False) -> None:
        """The outcomes held, with the intents of the group at ``next_group``, in one
        transaction.

        The held one-record outcomes are combined first: a group costs one outcome frame build
        and one fingerprint computation, not one of each per record (the rows are the same)."""
        now = dt.datetime.now(dt.UTC)
        self._pace()
        held = self._held_frames()
        outcomes = pd.concat(held) if len(held) > 1 else held[0] if held else None
        fingerprints = pd.DataFrame()
        if outcomes is not None:
            earned = fresh_fingerprints(
                outcomes, self.records.loc[outcomes.index], now, delivered=self.delivered
            )
            fingerprints = earned if not earned.empty else fingerprints
        frames = [outcomes] if outcomes is not None else []
        if next_group is not None and self.intents:
            pending = self._pending(next_group)
            if not pending.empty:
                frames.append(pending)
        self._outcomes, self._held = [], 0
        # typed apart, then joined: an all-empty column of one frame cannot retype the other's
        typed = [delivery_rows(f, self.records.loc[f.index], self.run_id, now) for f in frames]
        rows = pd.concat(typed) if len(typed) > 1 else typed[0] if typed else pd.DataFrame()
        if rows.empty and fingerprints.empty:
            self._since = self.clock()
            return
        # the first commit sets the tables up (and creates the deliveries table when it is
        # new); the later ones only insert
        checkpointed = last or self._unchecked + 1 >= CHECKPOINT_EVERY
        commit_checkpoint(
            self.database,
            rows,
            fingerprints,
            existing=self._ready,
            checkpoint=checkpointed,
        )
        self._ready = self._ready or not rows.empty
        self.transactions += 1
        self._unchecked = 0 if checkpointed else self._unchecked + 1
        self._since = self.clock()

    def intent(self, pending: pd.DataFrame | RequestRows) -> None:
        """``deliver``'s intent: the request's records are durable ``pending`` already, or
        their group is committed now (the request's own rows are never framed)."""
        if not len(pending):
            return
        start = (
            pending.positions.start if isinstance(pending, RequestRows) else int(pending.index[0])
        )
        if start >= self._covered:
            self._commit(start)

    def checkpoint(self, outcomes: pd.DataFrame | RequestRows) -> None:
        """``deliver``'s checkpoint: held until the group ends; its end commits the group's
        outcomes and the next group's intents together."""
        if not len(outcomes):
            return
        self._outcomes.append(outcomes)
        self._held += len(outcomes)
        after = (
            outcomes.positions.stop
            if isinstance(outcomes, RequestRows)
            else self._position(outcomes.index[-1]) + 1
        )
        last = after >= len(self.records)
        if self.intents and after >= self._covered and self._covered:
            self._commit(None if last else after, last=last)
        elif self._held >= self._size and (not self.intents or after >= self._covered):
            self._commit(None, last=last)

    def flush(self) -> None:
        """Commit the outcomes still held (the end of the delivery, or its failure), and
        checkpoint what the last commits left in the write-ahead log."""
        if self._outcomes:
            self._commit(None, last=True)
        if self._unchecked:
            connect(self.database).close()  # a plain release checkpoints
            self._unchecked = 0


@contextlib.contextmanager
def journal(
    database: str,
    target: str,
    records: pd.DataFrame,
    run_id: str,
    *,
    every: int,
    intents: bool = True,
    group_seconds: float | None = None,
    requests_per_minute: float | None = None,
) -> Iterator[DeliveryJournal]:
    """A ``DeliveryJournal`` whose held outcomes are committed however the delivery ends."""
    kept = DeliveryJournal(
        database,
        target,
        records,
        run_id,
        every=every,
        intents=intents,
        group_seconds=group_seconds,
        requests_per_minute=requests_per_minute,
    )
    try:
        yield kept
    finally:
        kept.flush()


def capture_responses(database: str, rows: pd.DataFrame) -> None:
    """Append Planhat's answers to ``planhat.api_responses`` (one short write)."""
    conn = connect(database)
    try:
        append_table(conn, API_RESPONSES, rows)
    finally:
        conn.close()


@contextlib.contextmanager
def step_lock(database: str, run_id: str, *, dry_run: bool) -> Iterator[None]:
    """Held by every delivering step (a dry run writes nothing: it needs no lock)."""
    if dry_run:
        yield
        return
    try:
        lock = delivery_lock(database, run_id)
        lock.__enter__()
    except WarehouseBusy as exc:
        raise dg.Failure(str(exc), allow_retries=False) from None
    try:
        yield
    finally:
        lock.__exit__(None, None, None)
