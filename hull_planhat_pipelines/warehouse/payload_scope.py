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
  not delivered, or refused (their key's fingerprint is not the one they were sent with), or,
  for a payload sent with the fingerprint Planhat already had (the endusers following a
  company Planhat deleted), not delivered since it was written (``forced_not_taken``);
- in-segment profiles whose key has no fingerprint (never delivered) and whose company Planhat
  has or is being sent (the others are skipped until it does: they wait outside the scope
  instead of being mapped and skipped every run). Companies: all of them, found by a scan
  of the accounts, but those the last mapping of them skipped (``ops.payload_skipped``: an
  invalid owner or co-owner). Such a skip is decided by the account's own row, which comes
  back through the log when it changes, and by the Planhat users, whose change maps every
  profile: a skipped account is logged once, not mapped and skipped again every run.
  Endusers: a scan of every user would cost the store, so the scope keeps
  (``ops.payload_waiting``) the ones found last run that did not become payloads (skipped),
  and the companies known then (``ops.payload_known_companies``); a user enters the set
  only by a change the log records (its segments, identity or account link, or its account's
  identity), or by its company becoming known, so the run tests those users and the kept ones
  alone. Fingerprints are never deleted, so no user re-enters by losing one. A run that maps
  every profile scans every user once and keeps what it finds (``ops.payload_tracked``); a run
  that finds the kept set replaced since it read it (two runs at once) forgets it, and the
  next run scans;
- the profiles sharing a key with any of those (one row per key is chosen among them), or
  holding a key one of those was delivered under and holds no longer: a duplicate left out
  of that key's delivery while the other held it, whose content Planhat has never had.

Everything else has, by construction, the fingerprint of its current content. Every profile is
mapped when there is no previous scope, the mapping settings changed (their digest), a forced
send is asked for, or (companies) the Planhat users that owners are checked against changed.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace

import duckdb
import pandas as pd

from hull_planhat_pipelines.settings import Settings
from hull_planhat_pipelines.sync.canonical import canonical_hash
from hull_planhat_pipelines.sync.hull.batch import quote
from hull_planhat_pipelines.sync.hull.change_groups import read_groups
from hull_planhat_pipelines.sync.log import SyncEvent
from hull_planhat_pipelines.warehouse.connection import (
    connect,
    has_column,
    run,
    select_where,
    table_exists,
    transaction,
)
from hull_planhat_pipelines.warehouse.deliveries import (
    DELIVERIES,
    FINGERPRINTS,
    KNOWN_COMPANY_SOURCES,
    in_segment,
    read_rows,
    read_rows_by_id,
)
from hull_planhat_pipelines.warehouse.hull_store import CHANGES, change_seq, changed_since

SCOPE = "ops.payload_scope"
PENDING = "ops.payload_pending"
WAITING = "ops.payload_waiting"
KNOWN = "ops.payload_known_companies"
TRACKED = "ops.payload_tracked"
SKIPPED = "ops.payload_skipped"
PROFILES = {"companies": "hull.accounts", "endusers": "hull.users"}
"""The profile table each target maps."""
SCOPE_DDL = [
    "create schema if not exists ops",
    f"create table if not exists {SCOPE} (target varchar primary key, seq bigint, digest varchar)",
    f"create table if not exists {PENDING} (target varchar, hull_id varchar)",
    f"alter table {PENDING} add column if not exists key varchar",
    f"alter table {PENDING} add column if not exists fingerprint varchar",
    f"alter table {PENDING} add column if not exists written_at timestamp with time zone",
    f"create table if not exists {WAITING} (target varchar, hull_id varchar)",
    f"create table if not exists {KNOWN} (target varchar, external_id varchar)",
    f"create table if not exists {TRACKED} (target varchar primary key, version varchar)",
    f"create table if not exists {SKIPPED} (target varchar, hull_id varchar)",
]
PENDING_COLUMNS = ["hull_id", "key", "fingerprint"]


@dataclass(frozen=True)
class Waiting:
    """Endusers: the in-segment users without a fingerprint whose company is known, as this
    run found them, and how the known companies moved since the kept set (``replace``: the
    kept set is rebuilt from ``added``). ``version``: of the kept set this run read (None:
    none was kept); a new one, never used before, each time a set is stored."""

    hull_ids: tuple[str, ...]
    added: tuple[str, ...]
    removed: tuple[str, ...]
    replace: bool
    version: str | None = None


@dataclass(frozen=True)
class Skipped:
    """Companies: the profiles a run mapped (None: every one) and those of them it skipped;
    ``remember`` keeps the skipped ones out of the next run's never-delivered seed."""

    mapped: frozenset[str] | None
    skipped: frozenset[str]


@dataclass(frozen=True)
class Scope:
    """``where``: SQL over the profile table selecting the rows to map (None: all).
    ``waiting``: what ``remember`` keeps for the next run's seed (None: nothing is kept, and
    the next run scans every user). ``skipped_before``: profiles left out because an earlier
    run skipped them and they did not change since (their skip is logged once, not each run).
    ``skipped``: set by the payload asset once it mapped (``Skipped``)."""

    target: str
    where: str | None
    seq: int
    digest: str
    waiting: Waiting | None = None
    skipped_before: int = 0
    skipped: Skipped | None = None


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
        return _every_profile(conn, settings, target, seq, digest)
    rows = conn.execute(f"select seq, digest from {SCOPE} where target = ?", [target]).fetchall()
    if not rows or rows[0][1] != digest:
        return _every_profile(conn, settings, target, seq, digest)
    last = int(rows[0][0])
    kind = "account" if target == "companies" else "user"
    config = settings.planhat
    if target == "companies":
        read = [*config.account_attributes, config.owner_attribute, config.co_owner_attribute]
    else:
        read = list(config.user_attributes)
    changed = changed_since(conn, kind, last, read_groups(read))
    pending = pending_not_taken(conn, target)
    with transaction(conn):  # every statement of the scope reads the same store
        if target == "companies":
            fingerprinted = (
                f"(select key from {FINGERPRINTS} where target = {quote(target)})"
                if _exists(conn, FINGERPRINTS)
                else "(select null::varchar as key where false)"
            )
            key = "nullif(trim(external_id), '')"
            segment = in_segment(list(settings.planhat.company_segments))
            skipped = (
                f"(select hull_id from {SKIPPED} where target = {quote(target)}"
                " and hull_id is not null)"
                if _exists(conn, SKIPPED)
                else "(select null::varchar as hull_id where false)"
            )
            seeds = [
                changed,
                pending,
                f"(select hull_id from hull.accounts where {segment} and {key} is not null"
                f" and external_id not in {fingerprinted} and hull_id not in {skipped})",
            ]
            where = _select_scope(conn, target, "hull.accounts", seeds, ["external_id"])
            # the kept skips this run leaves alone: in the store and its segment, not mapped
            [(before,)] = run(
                conn,
                f"select count(*) from (select hull_id from hull.accounts where {segment}"
                f" and hull_id in {skipped}) s anti join {_scoped(target)} c using (hull_id)",
            )
            return Scope(target, where, seq, digest, skipped_before=int(before))
        # an enduser reads its account's external id only: a structural change
        accounts = changed_since(conn, "account", last, read_groups([]))
        of_accounts = f"(select hull_id from hull.users where account_hull_id in {accounts})"
        waiting = _waiting(conn, settings, target, [changed, pending, of_accounts])
        seeds = [changed, pending, of_accounts, f"(select hull_id from {WAITING_NOW})"]
        where = _select_scope(conn, target, "hull.users", seeds, ["external_id", "email"])
    return Scope(target, where, seq, digest, waiting)


def with_skips(
    mapped: Scope,
    profiles: pd.DataFrame,
    events: Iterable[SyncEvent],
    skip: str,
    reasons: Iterable[str],
) -> Scope:
    """``mapped`` once its ``profiles`` were mapped, with the ones ``events`` named skipped
    (``skip``) for one of ``reasons``: they stay out of the next runs' never-delivered seed
    until they change. Only a skip that the profile's own row decides may be kept: one that
    depends on other profiles (a duplicate key) must be tested again every run."""
    kept = frozenset(reasons)
    return replace(
        mapped,
        skipped=Skipped(
            None if mapped.where is None else frozenset(profiles["hull_id"].astype(str)),
            frozenset(
                str(e.object_id)
                for e in events
                if e.event == skip and e.reason in kept and e.object_id
            ),
        ),
    )


def _every_profile(
    conn: duckdb.DuckDBPyConnection, settings: Settings, target: str, seq: int, digest: str
) -> Scope:
    """A scope mapping every profile; for endusers, with the waiting users a scan finds, kept
    so that the next run starts from them (the scan is small beside mapping every user)."""
    if target != "endusers" or not (_exists(conn, "hull.users") and _exists(conn, "hull.accounts")):
        return Scope(target, None, seq, digest)
    with transaction(conn):
        waiting = _waiting(conn, settings, target, [], scan=True)
    return Scope(target, None, seq, digest, waiting)


ENDUSER_KEY = (
    "case when nullif(trim(external_id), '') is not null then 'external_id:' || external_id"
    " when nullif(trim(email), '') is not null then 'email:' || email end"
)
"""SQL over ``hull.users``: the key an enduser is delivered under."""
DELIVERY_KEY = {
    "companies": "case when nullif(trim(external_id), '') is not null then external_id end",
    "endusers": ENDUSER_KEY,
}
"""SQL over each target's profile table: the key its payload is delivered under."""
KNOWN_NOW = "temp.payload_known_now"
KNOWN_ADDED = "temp.payload_known_added"
WAITING_NOW = "temp.payload_waiting_now"


def _waiting(
    conn: duckdb.DuckDBPyConnection,
    settings: Settings,
    target: str,
    changes: list[str],
    *,
    scan: bool = False,
) -> Waiting:
    """The in-segment users whose key has no fingerprint and whose company is known, selected
    into ``WAITING_NOW``: among every user when nothing is kept (or ``scan``), else among the
    kept ones, the users of companies known since, and ``changes`` (the only other ways in)."""
    known = [sql for table, sql in KNOWN_COMPANY_SOURCES.items() if _exists(conn, table)]
    run(
        conn,
        f"create or replace temp table {KNOWN_NOW} as select distinct external_id from ("
        + " union all ".join([*known, "select null::varchar where false"])
        + ") k(external_id) where external_id is not null",
    )
    segment = in_segment(list(settings.planhat.contact_segments))
    company_known = _of_companies_in(KNOWN_NOW)
    # the fingerprints of the tested users' keys only, not every key delivered
    taken = (
        f"exists (select 1 from {FINGERPRINTS} f where f.target = {quote(target)}"
        " and f.key = c.key)"
        if _exists(conn, FINGERPRINTS)
        else "false"
    )
    columns = f"hull_id, {ENDUSER_KEY} as key, account_hull_id, segments"
    test = (
        f" select hull_id from c where {segment} and key is not null and not {taken}"
        f" and {company_known}"
    )
    version = None if scan else _kept_version(conn, target)
    if version is None:
        run(
            conn,
            f"create or replace temp table {WAITING_NOW} as"
            f" with c as (select {columns} from hull.users){test}",
        )
        added = _strings(conn, f"select external_id from {KNOWN_NOW}")
        return Waiting(_strings(conn, f"select hull_id from {WAITING_NOW}"), added, (), True)
    kept = f"select external_id from {KNOWN} where target = {quote(target)}"
    run(
        conn,
        f"create or replace temp table {KNOWN_ADDED} as"
        f" select external_id from {KNOWN_NOW} except {kept}",
    )
    added = _strings(conn, f"select external_id from {KNOWN_ADDED}")
    removed = _strings(conn, f"{kept} except select external_id from {KNOWN_NOW}")
    candidates = [f"(select hull_id from {WAITING} where target = {quote(target)})", *changes]
    if added:
        candidates.append(f"(select hull_id from hull.users where {_of_companies_in(KNOWN_ADDED)})")
    rows = select_where(
        "hull.users",
        "hull_id in (" + " union ".join(f"select hull_id from {c}" for c in candidates) + ")",
        columns,
    )
    run(
        conn,
        f"create or replace temp table {WAITING_NOW} as with c as materialized ({rows}){test}",
    )
    hull_ids = _strings(conn, f"select hull_id from {WAITING_NOW}")
    return Waiting(hull_ids, added, removed, False, version)


def _of_companies_in(table: str) -> str:
    """SQL over ``hull.users``: the user's account has an external id listed in ``table``."""
    return (
        "account_hull_id in (select hull_id from hull.accounts where external_id in"
        f" (select external_id from {table}))"
    )


def _kept_version(conn: duckdb.DuckDBPyConnection, target: str) -> str | None:
    """The version of ``target``'s kept waiting set (None: none is kept)."""
    if not all(_exists(conn, t) for t in (WAITING, KNOWN, TRACKED)):
        return None
    rows = run(conn, f"select coalesce(version, '') from {TRACKED} where target = ?", [target])
    return str(rows[0][0]) if rows else None


def _strings(conn: duckdb.DuckDBPyConnection, sql: str) -> tuple[str, ...]:
    return tuple(str(row[0]) for row in run(conn, sql))


def _scoped(target: str) -> str:
    """The temporary table ``_select_scope`` selects ``target``'s profiles into."""
    return f"temp.payload_scope_{target}"


def _select_scope(
    conn: duckdb.DuckDBPyConnection, target: str, table: str, seeds: list[str], keys: list[str]
) -> str:
    """The scope's profiles, selected into a temporary table of the connection; returns SQL
    over ``table`` reading them.

    One statement a seed, then one for the profiles sharing a key with any of them (one row
    per key is sent: the choice is made among all of them). Each statement reads the columns
    it needs and the connection lets their blocks go before the next one: as one statement,
    a hundred changed profiles held every key, segment and fingerprint column of the store at
    once. The caller runs them in one transaction: they see the same store."""
    seed = f"temp.payload_seed_{target}"
    scoped = _scoped(target)
    columns = ", ".join(keys)
    run(conn, f"create or replace temp table {seed} (hull_id varchar)")
    for one in seeds:
        run(conn, f"insert into {seed} {one}")
    if not run(conn, f"select 1 from {seed} limit 1"):  # nobody shares a key with nobody
        run(conn, f"create or replace temp table {scoped} (hull_id varchar)")
        return f"hull_id in (select hull_id from {scoped})"
    rows = select_where(table, f"hull_id in (select hull_id from {seed})", f"hull_id, {columns}")
    sharers = " or ".join(f"{k} in (select {k} from seed_rows)" for k in keys)
    left = _keys_left(conn, target, rows)
    if left:
        sharers += f" or {DELIVERY_KEY[target]} in (select key from {left})"
    run(
        conn,
        f"create or replace temp table {scoped} as with seed_rows as materialized ({rows})"
        f" select hull_id from {seed} union select hull_id from {table} where {sharers}",
    )
    return f"hull_id in (select hull_id from {scoped})"


def _keys_left(conn: duckdb.DuckDBPyConnection, target: str, rows: str) -> str | None:
    """A temporary table of the keys that the seed profiles (``rows``) were delivered under
    and hold no longer (their email or external id changed), or None when there are none.

    Whoever holds such a key now was left out of its delivery by the one-row-per-key choice
    (a duplicate) or never had it: Planhat holds the leaver's content under it, which only a
    mapping of the holder corrects (a scan of the store would; the scope must too)."""
    if not _exists(conn, DELIVERIES):
        return None
    left = f"temp.payload_keys_left_{target}"
    run(
        conn,
        f"create or replace temp table {left} as with seed_rows as materialized ({rows})"
        f" select distinct d.key from {DELIVERIES} d join seed_rows s on d.hull_id = s.hull_id"
        f" where d.target = {quote(target)} and d.key is not null"
        f" and d.key is distinct from ({DELIVERY_KEY[target]})",
    )
    return left if run(conn, f"select 1 from {left} limit 1") else None


def pending_not_taken(conn: duckdb.DuckDBPyConnection, target: str) -> str:
    """SQL: the profiles of the previous payloads that Planhat has not taken: their key's
    fingerprint is not the one they were sent with (not delivered, refused, or never settled),
    or it is but no delivery stored it since the payload was written (a forced payload: see
    ``forced_not_taken``). One that was delivered is current by its fingerprint: mapping it
    again would only find it unchanged (a pending row written before fingerprints were kept is
    always mapped)."""
    rows = f"select hull_id from {PENDING} p where p.target = {quote(target)}"
    if not has_column(conn, PENDING, "fingerprint") or not _exists(conn, FINGERPRINTS):
        return f"({rows})"
    columns, taken = "key, fingerprint", "f.key = p.key and f.fingerprint = p.fingerprint"
    if _delivery_times_kept(conn):
        columns, taken = f"{columns}, delivered_at", f"{taken} and {_DELIVERED_SINCE_WRITTEN}"
    # an anti join (a row without a fingerprint never matches: it is mapped); written as a
    # correlated ``not exists``, DuckDB copied the whole pending set to decorrelate it
    return (
        f"(select p.hull_id from {PENDING} p anti join (select {columns}"
        f" from {FINGERPRINTS} where target = {quote(target)}) f on {taken}"
        f" where p.target = {quote(target)})"
    )


def _delivery_times_kept(conn: duckdb.DuckDBPyConnection) -> bool:
    """Whether pending rows say when they were written and fingerprints when they were stored
    (tables written by earlier versions may not: their rows are judged by fingerprint alone)."""
    return (
        _exists(conn, FINGERPRINTS)
        and has_column(conn, PENDING, "written_at")
        and has_column(conn, FINGERPRINTS, "delivered_at")
    )


_DELIVERED_SINCE_WRITTEN = "(p.written_at is null or f.delivered_at >= p.written_at)"
"""SQL: the fingerprint ``f`` was stored by a delivery after the pending row ``p`` was written
(a row written before the time was kept: by its fingerprint alone, as before)."""


def forced_not_taken(conn: duckdb.DuckDBPyConnection | None, target: str) -> set[str]:
    """The keys of pending payloads that carry the fingerprint Planhat already had and that no
    delivery has taken since they were written: the endusers following a company Planhat
    deleted (and the company). Mapped again they are unchanged, so nothing but this would send
    them: a run killed, or refused, between a recreated company and its endusers would lose
    them. They are forced again until a delivery takes them. An operator's forced run writes
    its rows without a time: its delivery sends them (and what was owed before) once; a
    failure there is the operator's to see in that run and force again."""
    if conn is None or not _exists(conn, PENDING) or not _delivery_times_kept(conn):
        return set()
    rows = run(
        conn,
        f"select p.key from {PENDING} p join {FINGERPRINTS} f on f.target = p.target"
        " and f.key = p.key and f.fingerprint = p.fingerprint"
        " where p.target = ? and p.written_at is not null"
        f" and not coalesce({_DELIVERED_SINCE_WRITTEN}, false)",
        [target],
    )
    return {str(key) for (key,) in rows}


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
    database_conn: duckdb.DuckDBPyConnection,
    mapped: Scope,
    payloads: pd.DataFrame,
    *,
    forced: bool = False,
) -> None:
    """The sequence mapped, the profiles whose payloads are now pending delivery and (endusers)
    the waiting users that did not become one, with the companies known.

    Pending rows say when they were written, so that one carrying the fingerprint Planhat
    already had (a company's endusers following its re-creation) is owed until a delivery
    takes it (``forced_not_taken``). A ``forced`` run's rows do not: a forced send is the
    operator's, sent once by its delivery, and not repeated by later runs."""
    for statement in SCOPE_DDL:
        run(database_conn, statement)
    rows = _pending_rows(payloads)
    stored = database_conn.execute(
        f"select seq, digest from {SCOPE} where target = ?", [mapped.target]
    ).fetchall()
    waiting = _still_waiting(mapped, rows)
    version = _kept_version(database_conn, mapped.target)
    skipped = _still_skipped(database_conn, mapped)
    database_conn.register("_pending", rows)
    try:
        if (
            stored == [(mapped.seq, mapped.digest)]
            and _same_pending(database_conn, mapped.target, len(rows))
            and (forced or not _sends_what_planhat_has(database_conn, mapped.target))
            and _same_waiting(database_conn, mapped, waiting, version)
            and skipped == _kept_skipped(database_conn, mapped.target)
        ):
            return  # nothing moved: nothing written
        with transaction(database_conn):
            run(database_conn, f"delete from {PENDING} where target = ?", [mapped.target])
            if len(rows):
                run(
                    database_conn,
                    f"insert into {PENDING} (target, hull_id, key, fingerprint, written_at)"
                    f" select ?, {_NEW_PENDING_COLUMNS},"
                    f" {'null' if forced else 'current_timestamp'} from _pending",
                    [mapped.target],
                )
            run(
                database_conn,
                f"insert or replace into {SCOPE} (target, seq, digest) values (?, ?, ?)",
                [mapped.target, mapped.seq, mapped.digest],
            )
            _keep_waiting(database_conn, mapped, waiting, version)
            if mapped.skipped is not None:
                run(database_conn, f"delete from {SKIPPED} where target = ?", [mapped.target])
                run(
                    database_conn,
                    f"insert into {SKIPPED} select ?, unnest(?::varchar[])",
                    [mapped.target, sorted(skipped)],
                )
    finally:
        database_conn.unregister("_pending")


def _kept_skipped(conn: duckdb.DuckDBPyConnection, target: str) -> frozenset[str]:
    rows = run(conn, f"select hull_id from {SKIPPED} where target = ?", [target])
    return frozenset(str(r[0]) for r in rows if r[0] is not None)


def _still_skipped(conn: duckdb.DuckDBPyConnection, mapped: Scope) -> frozenset[str]:
    """The profiles the next run leaves out of its never-delivered seed: those this run
    skipped, and those an earlier run skipped that this one did not map (they did not change).
    Unchanged from what is kept when the run reports no mapping (``skipped`` is None)."""
    kept = _kept_skipped(conn, mapped.target)
    found = mapped.skipped
    if found is None:
        return kept
    ids = found.skipped if found.mapped is None else (kept - found.mapped) | found.skipped
    if not ids:
        return frozenset()
    # profiles gone from the store since (merged away, deleted) are not kept
    rows = run(
        conn,
        f"select h from unnest(?::varchar[]) t(h)"
        f" where h in (select hull_id from {PROFILES[mapped.target]})",
        [sorted(ids)],
    )
    return frozenset(str(r[0]) for r in rows)


def _still_waiting(mapped: Scope, pending: pd.DataFrame) -> list[str]:
    """The waiting users that did not become a payload (skipped): the pending ones are mapped
    again by the pending seed until Planhat takes them."""
    if mapped.waiting is None:
        return []
    sent = set(pending["hull_id"])
    return sorted({h for h in mapped.waiting.hull_ids if h not in sent})


def _same_waiting(
    conn: duckdb.DuckDBPyConnection, mapped: Scope, waiting: list[str], version: str | None
) -> bool:
    """Whether the kept waiting state (of ``version``) is already what this run would keep."""
    found = mapped.waiting
    if found is None:
        return version is None
    if found.replace or found.added or found.removed or version != found.version:
        return False
    kept = run(conn, f"select hull_id from {WAITING} where target = ?", [mapped.target])
    return sorted(str(r[0]) for r in kept) == waiting


def _keep_waiting(
    conn: duckdb.DuckDBPyConnection, mapped: Scope, waiting: list[str], version: str | None
) -> None:
    """Store the next run's waiting seed; or forget it, so that the next run scans every
    user: when this run found none, or when its set was built on a kept one that another
    run replaced since this one read it (two runs at once: this run's changes are relative
    to a set that is gone, and the other's findings would be lost). A scan's set is whole at
    its snapshot (a later change is in the log after its sequence), so it is stored as is."""
    target = mapped.target
    known = mapped.waiting
    if known is not None and not known.replace and version != known.version:
        known = None
    run(conn, f"delete from {WAITING} where target = ?", [target])
    if known is None:
        run(conn, f"delete from {KNOWN} where target = ?", [target])
        run(conn, f"delete from {TRACKED} where target = ?", [target])
        return
    if waiting:
        run(conn, f"insert into {WAITING} select ?, unnest(?::varchar[])", [target, waiting])
    if known.replace:
        run(conn, f"delete from {KNOWN} where target = ?", [target])
    elif known.removed:
        run(
            conn,
            f"delete from {KNOWN} where target = ? and external_id in (select unnest(?))",
            [target, list(known.removed)],
        )
    if known.added:
        run(  # another run may have kept some of them meanwhile: each is kept once
            conn,
            f"insert into {KNOWN} select ?, a from unnest(?::varchar[]) t(a)"
            f" where a not in (select external_id from {KNOWN} where target = ?)",
            [target, list(known.added), target],
        )
    run(
        conn,
        f"insert or replace into {TRACKED} (target, version) values (?, ?)",
        [target, uuid.uuid4().hex],
    )


_NEW_PENDING_COLUMNS = "hull_id::varchar, key::varchar, fingerprint::varchar"
_NEW_PENDING = f"{_NEW_PENDING_COLUMNS} from _pending"
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


def _sends_what_planhat_has(database_conn: duckdb.DuckDBPyConnection, target: str) -> bool:
    """Whether a registered ``_pending`` row carries the fingerprint Planhat already has (a
    follow-up): it is written again with this run's time, not kept with an earlier one that a
    delivery may have taken since (the company deleted in Planhat a second time)."""
    if not _exists(database_conn, FINGERPRINTS):
        return False
    [(found,)] = run(
        database_conn,
        f"select exists (select 1 from _pending n join {FINGERPRINTS} f on f.target = ?"
        " and f.key = n.key::varchar and f.fingerprint = n.fingerprint::varchar)",
        [target],
    )
    return bool(found)


def _pending_rows(payloads: pd.DataFrame) -> pd.DataFrame:
    """One row per profile with a payload: what it is sent under and with."""
    if not len(payloads):
        return pd.DataFrame({c: pd.Series([], dtype=object) for c in PENDING_COLUMNS})
    rows = payloads.loc[payloads["hull_id"].notna(), PENDING_COLUMNS].astype(str)
    return rows.drop_duplicates("hull_id", keep="last").astype(object).reset_index(drop=True)


def remember_scopes(
    path: str, scopes: Iterable[Scope], payloads: pd.DataFrame, *, forced: bool = False
) -> None:
    """``remember`` each mapped scope on one short-lived write connection: the next run maps
    only what changed after this one."""
    mapped = list(scopes)
    if not mapped:
        return
    conn = connect(path)
    try:
        for one in mapped:
            remember(conn, one, payloads, forced=forced)
    finally:
        conn.close()
