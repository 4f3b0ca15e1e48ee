"""Which profiles a payload asset maps: the ones that may differ from what Planhat was sent.

Mapping and fingerprinting every in-segment profile each cycle costs the store, not the change.
A payload asset instead maps, per target (``companies``, ``endusers``):

- the profiles the change log (``ops.hull_changes``) says were rewritten since the sequence it
  mapped last, in a part its mapping reads (the attribute groups of its mapped, owner and
  co-owner attributes, or identity, link and segments: ``sync.hull.change_groups``); for
  endusers also the users of an account whose identity was rewritten (their
  ``companyExternalId`` comes from it). A profile whose only change is the ``planhat/*``
  attributes a snapshot wrote back after its delivery is not mapped again;
- the profiles of its previous payloads (``ops.payload_pending``) that Planhat did not take:
  not delivered, or refused (their key's fingerprint is not the one they were sent with);
- in-segment profiles whose key has no fingerprint (never delivered, or a fingerprint the
  settlement dropped) and whose company Planhat has or is being sent (the others are skipped
  until it does: they wait outside the scope instead of being mapped and skipped every run);
- the profiles sharing a key with any of those (one row per key is chosen among them).

Everything else has, by construction, the fingerprint of its current content. Every profile is
mapped when there is no previous scope, the mapping settings changed (their digest), a forced
send is asked for, or (companies) the Planhat users that owners are checked against changed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import duckdb
import pandas as pd

from hull_planhat_pipelines.settings import Settings
from hull_planhat_pipelines.sync.canonical import canonical_hash
from hull_planhat_pipelines.sync.hull.batch import quote
from hull_planhat_pipelines.sync.hull.change_groups import read_groups
from hull_planhat_pipelines.warehouse.connection import (
    connect,
    has_column,
    run,
    select_where,
    table_exists,
    transaction,
)
from hull_planhat_pipelines.warehouse.deliveries import (
    FINGERPRINTS,
    KNOWN_COMPANY_SOURCES,
    in_segment,
    read_rows,
    read_rows_by_id,
)
from hull_planhat_pipelines.warehouse.hull_store import CHANGES, change_seq, changed_since

SCOPE = "ops.payload_scope"
PENDING = "ops.payload_pending"
SCOPE_DDL = [
    "create schema if not exists ops",
    f"create table if not exists {SCOPE} (target varchar primary key, seq bigint, digest varchar)",
    f"create table if not exists {PENDING} (target varchar, hull_id varchar)",
    f"alter table {PENDING} add column if not exists key varchar",
    f"alter table {PENDING} add column if not exists fingerprint varchar",
]
PENDING_COLUMNS = ["hull_id", "key", "fingerprint"]


@dataclass(frozen=True)
class Scope:
    """``where``: SQL over the profile table selecting the rows to map (None: all)."""

    target: str
    where: str | None
    seq: int
    digest: str


def _exists(conn: duckdb.DuckDBPyConnection, table: str) -> bool:
    return table_exists(conn, *table.split("."))


def _digest(conn: duckdb.DuckDBPyConnection, settings: Settings, target: str) -> str:
    """The settings a target's mapping depends on (and, for companies, the owners' list)."""
    planhat = settings.planhat.model_dump(mode="json")
    parts: list[object] = [target, planhat]
    if target == "companies" and _exists(conn, "planhat.team_members"):
        columns = [
            row[0]
            for row in conn.execute("select * from planhat.team_members limit 0").description or []
        ]
        kept = ", ".join(f'"{c}"' for c in columns if c not in ("_fetched_at", "partition_date"))
        latest = (
            "where partition_date = (select max(partition_date) from planhat.team_members)"
            if "partition_date" in columns
            else ""
        )
        rows = conn.execute(
            "select md5(coalesce(string_agg(t::varchar, '|' order by t::varchar), ''))"
            f" from (select {kept} from planhat.team_members {latest}) t"
        ).fetchall()
        parts.append(rows[0][0])
    return canonical_hash(parts)


def scope(
    conn: duckdb.DuckDBPyConnection | None, settings: Settings, target: str, *, force: bool
) -> Scope:
    """What ``target``'s payload asset maps this run (see the module)."""
    if conn is None:
        return Scope(target, None, 0, "")
    digest = _digest(conn, settings, target)
    seq = change_seq(conn)
    if force or not (_exists(conn, SCOPE) and _exists(conn, CHANGES)):
        return Scope(target, None, seq, digest)
    rows = conn.execute(f"select seq, digest from {SCOPE} where target = ?", [target]).fetchall()
    if not rows or rows[0][1] != digest:
        return Scope(target, None, seq, digest)
    last = int(rows[0][0])
    kind = "account" if target == "companies" else "user"
    fingerprinted = (
        f"(select key from {FINGERPRINTS} where target = {quote(target)})"
        if _exists(conn, FINGERPRINTS)
        else "(select null::varchar as key where false)"
    )
    config = settings.planhat
    if target == "companies":
        read = [*config.account_attributes, config.owner_attribute, config.co_owner_attribute]
    else:
        read = list(config.user_attributes)
    changed = changed_since(conn, kind, last, read_groups(read))
    pending = pending_not_taken(conn, target)
    if target == "companies":
        key = "nullif(trim(external_id), '')"
        segment = in_segment(list(settings.planhat.company_segments))
        seeds = [
            changed,
            pending,
            f"(select hull_id from hull.accounts where {segment} and {key} is not null"
            f" and external_id not in {fingerprinted})",
        ]
        where = _select_scope(conn, target, "hull.accounts", seeds, ["external_id"])
        return Scope(target, where, seq, digest)
    # an enduser reads its account's external id only: a structural change
    accounts = changed_since(conn, "account", last, read_groups([]))
    key = (
        "case when nullif(trim(external_id), '') is not null then 'external_id:' || external_id"
        " when nullif(trim(email), '') is not null then 'email:' || email end"
    )
    segment = in_segment(list(settings.planhat.contact_segments))
    seeds = [
        changed,
        pending,
        f"(select hull_id from hull.users where account_hull_id in {accounts})",
        f"(select hull_id from hull.users where {segment} and {key} not in {fingerprinted}"
        f" and {_company_known(conn)})",
    ]
    where = _select_scope(conn, target, "hull.users", seeds, ["external_id", "email"])
    return Scope(target, where, seq, digest)


def _select_scope(
    conn: duckdb.DuckDBPyConnection, target: str, table: str, seeds: list[str], keys: list[str]
) -> str:
    """The scope's profiles, selected into a temporary table of the connection; returns SQL
    over ``table`` reading them.

    One statement a seed, then one for the profiles sharing a key with any of them (one row
    per key is sent: the choice is made among all of them). Each statement reads the columns
    it needs and the connection lets their blocks go before the next one: as one statement,
    a hundred changed profiles held every key, segment and fingerprint column of the store at
    once. The statements share one snapshot: they see the same store."""
    seed = f"temp.payload_seed_{target}"
    scoped = f"temp.payload_scope_{target}"
    columns = ", ".join(keys)
    with transaction(conn):
        run(conn, f"create or replace temp table {seed} (hull_id varchar)")
        for one in seeds:
            run(conn, f"insert into {seed} {one}")
        rows = select_where(table, f"hull_id in (select hull_id from {seed})", columns)
        sharers = " or ".join(f"{k} in (select {k} from seed_rows)" for k in keys)
        run(
            conn,
            f"create or replace temp table {scoped} as with seed_rows as materialized ({rows})"
            f" select hull_id from {seed} union select hull_id from {table} where {sharers}",
        )
    return f"hull_id in (select hull_id from {scoped})"


def pending_not_taken(conn: duckdb.DuckDBPyConnection, target: str) -> str:
    """SQL: the profiles of the previous payloads that Planhat has not taken: their key's
    fingerprint is not the one they were sent with (not delivered, refused, or never settled).
    One that was delivered is current by its fingerprint: mapping it again would only find
    it unchanged (a pending row written before fingerprints were kept is always mapped)."""
    rows = f"select hull_id from {PENDING} p where p.target = {quote(target)}"
    if not has_column(conn, PENDING, "fingerprint") or not _exists(conn, FINGERPRINTS):
        return f"({rows})"
    # an anti join (a row without a fingerprint never matches: it is mapped); written as a
    # correlated ``not exists``, DuckDB copied the whole pending set to decorrelate it
    return (
        f"(select p.hull_id from {PENDING} p anti join (select key, fingerprint from"
        f" {FINGERPRINTS} where target = {quote(target)}) f on f.key = p.key"
        f" and f.fingerprint = p.fingerprint where p.target = {quote(target)})"
    )


def _company_known(conn: duckdb.DuckDBPyConnection) -> str:
    """SQL over ``hull.users``: the user's account is a company Planhat has or is being sent.

    A never-delivered user whose company Planhat does not have is skipped ("Account not in
    Planhat") however often it is mapped: it waits, outside the scope, until its account changes
    or the company becomes known (then it has no fingerprint and a known company: mapped)."""
    known = [sql for table, sql in KNOWN_COMPANY_SOURCES.items() if _exists(conn, table)]
    if not known:
        return "false"
    return (
        "account_hull_id in (select hull_id from hull.accounts where external_id in ("
        + " union all ".join(known)
        + "))"
    )


def accounts_of_users(
    conn: duckdb.DuckDBPyConnection | None, mapped: Scope, users: pd.DataFrame | None
) -> pd.DataFrame | None:
    """The accounts of the ``users`` a scope read (their ``companyExternalId`` comes from
    them), by their ids: the scope's SQL is not evaluated a second time. All accounts when the
    scope maps every profile; None while there is no warehouse."""
    if conn is None or mapped.where is None or users is None:
        return read_rows(conn, "hull.accounts", None)
    if not table_exists(conn, "hull", "accounts"):
        return None
    return read_rows_by_id(conn, "hull.accounts", users["account_hull_id"])


def remember(
    database_conn: duckdb.DuckDBPyConnection, mapped: Scope, payloads: pd.DataFrame
) -> None:
    """The sequence mapped and the profiles whose payloads are now pending delivery."""
    for statement in SCOPE_DDL:
        run(database_conn, statement)
    rows = _pending_rows(payloads)
    stored = database_conn.execute(
        f"select seq, digest from {SCOPE} where target = ?", [mapped.target]
    ).fetchall()
    database_conn.register("_pending", rows)
    try:
        if stored == [(mapped.seq, mapped.digest)] and _same_pending(
            database_conn, mapped.target, len(rows)
        ):
            return  # nothing moved: nothing written
        with transaction(database_conn):
            run(database_conn, f"delete from {PENDING} where target = ?", [mapped.target])
            if len(rows):
                run(
                    database_conn,
                    f"insert into {PENDING} (target, hull_id, key, fingerprint)"
                    f" select ?, {_NEW_PENDING}",
                    [mapped.target],
                )
            run(
                database_conn,
                f"insert or replace into {SCOPE} values (?, ?, ?)",
                [mapped.target, mapped.seq, mapped.digest],
            )
    finally:
        database_conn.unregister("_pending")


_NEW_PENDING = "hull_id::varchar, key::varchar, fingerprint::varchar from _pending"
"""The columns of the registered ``_pending`` rows, as ``PENDING`` stores them."""


def _same_pending(database_conn: duckdb.DuckDBPyConnection, target: str, rows: int) -> bool:
    """Whether the registered ``_pending`` rows are the ones stored for ``target`` already,
    compared in SQL: after a full load the stored set is every profile delivered, not worth a
    trip to Python."""
    [(stored,)] = run(database_conn, f"select count(*) from {PENDING} where target = ?", [target])
    if stored != rows:
        return False
    if not stored:
        return True
    stored_rows = f"select hull_id, key, fingerprint from {PENDING} where target = $1"
    new_rows = f"select {_NEW_PENDING}"
    [(differ,)] = run(
        database_conn,
        f"select exists ({stored_rows} except {new_rows})"
        f" or exists ({new_rows} except {stored_rows})",
        [target],
    )
    return not differ


def _pending_rows(payloads: pd.DataFrame) -> pd.DataFrame:
    """One row per profile with a payload: what it is sent under and with."""
    if not len(payloads):
        return pd.DataFrame({c: pd.Series([], dtype=object) for c in PENDING_COLUMNS})
    rows = payloads.loc[payloads["hull_id"].notna(), PENDING_COLUMNS].astype(str)
    return rows.drop_duplicates("hull_id", keep="last").astype(object).reset_index(drop=True)


def remember_scopes(path: str, scopes: Iterable[Scope], payloads: pd.DataFrame) -> None:
    """``remember`` each mapped scope on one short-lived write connection: the next run maps
    only what changed after this one."""
    mapped = list(scopes)
    if not mapped:
        return
    conn = connect(path)
    try:
        for one in mapped:
            remember(conn, one, payloads)
    finally:
        conn.close()
