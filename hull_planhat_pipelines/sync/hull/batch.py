"""One sync's working set: an in-memory DuckDB holding what the mappers staged.

Mapping, resolution and diffing are set operations over whole tables, so they share one
in-memory connection and hand tables to each other instead of round-tripping millions of rows
through pandas (each string crossing costs far more than the SQL that uses it). Only inputs
and final outputs cross the pandas boundary.

Staged tables (filled by ``hull.from_copper`` and ``hull.from_planhat``):
- ``in_records(kind, record_key, source_object, source_id, modified_at, is_shell)``: one row
  per source record; ``record_key`` is its anonymous id. A shell (``is_shell``) only names a
  profile another record points to (a person's company, an activity's lead).
- ``in_claims(kind, record_key, claim, value)``: identity claims besides the record key.
- ``in_attributes(kind, record_key, attr_group, attribute, value, source_object, source_id,
  modified_at)``: mapped values (canonical JSON, NULL = clear); a missing field has no row.
- ``in_writes(kind, record_key, attr_group, source_object, source_id, modified_at)``: which
  source record writes which group on which record (one row per record and group, so that
  choosing the one writer of a group never scans the attribute rows).
- ``in_links(user_key, account_key, source_object, source_id, modified_at)``.
- ``in_merges(kind, from_key, into_key)``: the profile holding ``from_key`` merges into the one
  holding ``into_key`` (a converted lead into its person), whatever claims each has.
- ``in_events(event_id, user_key, name, properties, occurred_at, source, source_id)``.
- ``in_clears(kind, hull_id, attribute, source_object, source_id)``: attributes of known
  profiles to clear unless a record writes them (deleted opportunities, detached records).
- ``in_sets(kind, hull_id, attribute, value, ...)``: values to set on known profiles unless a
  record writes them (``<group>/deleted_at``); ``in_unlinks(user_hull_id, ...)``: users leaving
  their account (a deleted company: ``unlinked_accounts(hull_id, source_id)`` until its users
  are read); ``deleted``: the detaches (``hull.deletions``).
- ``in_gone(kind, anonymous_id)``: records a source named gone (Planhat's): the profiles
  holding them detach from that source.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import duckdb
import pandas as pd

from hull_planhat_pipelines.sync.canonical import value_text
from hull_planhat_pipelines.sync.hull.model import (
    CANONICAL_SQL,
    STABLE_ID_SQL,
    STORE_COLUMNS,
    STORE_SQL_TYPES,
    Kind,
)
from hull_planhat_pipelines.sync.operator_sql import is_locked_down

STAGING_SQL = """
create temp table in_records (kind varchar, record_key varchar, source_object varchar,
    source_id varchar, modified_at timestamptz, is_shell boolean);
create temp table in_claims (kind varchar, record_key varchar, claim varchar, value varchar);
create temp table in_attributes (kind varchar, record_key varchar, attr_group varchar,
    attribute varchar, value varchar, source_object varchar, source_id varchar,
    modified_at timestamptz);
create temp table in_writes (kind varchar, record_key varchar, attr_group varchar,
    source_object varchar, source_id varchar, modified_at timestamptz);
create temp table in_links (user_key varchar, account_key varchar, source_object varchar,
    source_id varchar, modified_at timestamptz);
create temp table in_events (event_id varchar, user_key varchar, name varchar, properties varchar,
    occurred_at timestamptz, source varchar, source_id varchar);
create temp table in_clears (kind varchar, hull_id varchar, attribute varchar,
    source_object varchar, source_id varchar);
create temp table in_sets (kind varchar, hull_id varchar, attribute varchar, value varchar,
    source_object varchar, source_id varchar, anonymous_id varchar);
create temp table in_unlinks (user_hull_id varchar, source_object varchar, source_id varchar);
create temp table gone_accounts (hull_id varchar);
create temp table unlinked_accounts (hull_id varchar, source_id varchar);
create temp table in_merges (kind varchar, from_key varchar, into_key varchar);
create temp table in_gone (kind varchar, anonymous_id varchar);
create temp table deleted (kind varchar, hull_id varchar, source_object varchar, source_id varchar,
    anonymous_id varchar);
"""


def quote(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def ident(name: str) -> str:
    """A SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


KEEP_BELOW_BYTES = 32 * 2**20
"""A batch's instance is kept for the next batch only when it holds less than this once the
batch's tables are gone (then its freed buffers are returned to the system: a kept instance
carries no batch's memory into the next step, however large the batch was)."""

PARALLEL_ROWS = 50_000
"""Rows a loaded table needs before a batch runs on every core. Over small tables a second
thread only waits on the first: on two cores a statement over 10,000 rows took 1.8 times as
long as on one thread, and an incremental sync runs some 250 of them (10,000 changes against
a million profiles: 2.34 s to 2.00 s, CPU 2.75 s to 2.24 s). A full load gains from every
core (200,000 profiles: 13.3 s on one thread, 11.7 s on two) although its records may all
come in tables under DuckDB's row group (122,880 rows): what it builds from them is many
times larger. 50,000 lies between the two (an incremental cycle's batches load thousands of
rows; a full load's, hundreds of thousands)."""

SHARED_FROM_ROWS = 50_000
"""Rows a table needs before ``export_table`` codes its ``shared`` columns as ENUMs. The codes
spare a first load's million rows a string object each; over an incremental sync's thousands
of rows they spare little memory, and each ENUM costs statements of its own (a type, a scan
of distinct values, a cast): about 25 of them a sync."""

_guard = threading.Lock()
_idle: list[duckdb.DuckDBPyConnection] = []
"""At most one in-memory instance, with the macros, that no batch uses."""


def _reset_after_fork() -> None:
    """A forked child uses none of its parent's instances (their threads did not follow)."""
    global _guard
    _guard = threading.Lock()
    _idle.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _new_instance(threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """A new in-memory instance with the package's macros (``threads``: its own setting)."""
    host = duckdb.connect()
    if threads:
        host.execute(f"set threads = {int(threads)}")
    host.execute(STABLE_ID_SQL)
    host.execute(CANONICAL_SQL)
    return host


def _instance() -> duckdb.DuckDBPyConnection:
    """The idle instance, or a new one (creating an instance costs more than most statements
    of an incremental batch)."""
    with _guard:
        if _idle:
            return _idle.pop()
    return _new_instance()


_LEFT_BEHIND = (
    "select (select count(*) from duckdb_tables())"
    " + (select count(*) from duckdb_views() where not internal)"
    " + (select count(*) from duckdb_types() where not internal)"
    " + (select count(*) from duckdb_sequences()),"
    " (select coalesce(sum(memory_usage_bytes), 0) from duckdb_memory())"
)
"""What a batch left in the instance beyond its connection: objects it created outside its
temporary schema, and the memory still held."""


def _give_back(host: duckdb.DuckDBPyConnection) -> None:
    """Keep ``host`` idle for the next batch, or close it: when it is locked down (operator SQL
    ran on it), when the batch left an object outside its temporary schema (the next batch
    would see it), or when it still holds memory (``KEEP_BELOW_BYTES``). A kept instance's
    freed buffers are returned to the system first: lowering the memory limit flushes its
    allocator."""
    with suppress(duckdb.Error):
        if not is_locked_down(host):
            left = host.execute(_LEFT_BEHIND).fetchone()
            if left is not None and not left[0] and left[1] < KEEP_BELOW_BYTES:
                host.execute("set memory_limit = '1MB'")
                host.execute("reset memory_limit")
                with _guard:
                    if not _idle:
                        _idle.append(host)
                        return
    host.close()


class Batch:
    """An in-memory DuckDB with the staging tables and the package's SQL macros.

    Its tables (and ENUM types) are temporary: they belong to the batch's connection and go
    with it, so that the instance under it can serve the next batch. ``threads`` gives the
    batch an instance of its own (the setting is the instance's)."""

    def __init__(self, threads: int | None = None) -> None:
        self._own = bool(threads)
        self._host = _new_instance(threads) if self._own else _instance()
        self.con = self._host.cursor()
        self.con.execute(STAGING_SQL)
        self._parallel = self._own  # a batch's own setting is kept
        if not self._own:
            self.con.execute("set threads = 1")  # until ``plan_for`` sees a large table
        self._registered = 0
        self._stores: dict[str, pd.DataFrame] = {}
        self._all_attributes: set[str] = set()
        self._store_attributes: dict[str, bool] = {}
        self._closed = False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.con.close()  # its temporary tables and types go with it
        finally:
            if self._own:
                self._host.close()
            else:
                _give_back(self._host)

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def sql(self, query: str, params: list[Any] | None = None) -> None:
        """Run statements and consume their result."""
        self.con.execute(query, params or [])

    def plan_for(self, rows: int) -> None:
        """Run on every core from now on if a table of ``rows`` rows is to be loaded (``load``
        asks for each frame; a batch that locks its configuration asks first: a locked one
        stays on one thread)."""
        if self._parallel or rows < PARALLEL_ROWS or is_locked_down(self.con):
            return
        self.con.execute("reset threads")
        self._parallel = True

    def drop(self, *tables: str) -> None:
        """Free intermediate tables (an in-memory database holds every table until dropped)."""
        for table in tables:
            self.sql(f"drop table if exists {table}")

    def scalar(self, query: str, params: list[Any] | None = None) -> Any:
        # consumed whole: a pending result makes DuckDB refuse ``register`` (``load``)
        rows = self.con.execute(query, params or []).fetchall()
        return rows[0][0] if rows else None

    def frame(self, query: str, params: list[Any] | None = None) -> pd.DataFrame:
        return self.con.execute(query, params or []).df()

    def load(self, name: str, frame: pd.DataFrame, select: str = "*") -> None:
        """Copy a DataFrame into table ``name`` (scanned once: pandas scans are slow to repeat)."""
        self.plan_for(len(frame))
        view = f"_frame_{self._registered}"
        self._registered += 1
        self.con.register(view, frame)
        try:
            self.sql(f"create or replace temp table {name} as select {select} from {view}")
        finally:
            self.con.unregister(view)

    def load_store(self, kind: Kind, frame: pd.DataFrame, attributes: bool = False) -> None:
        """The profile table as ``s_<kind>`` with typed contract columns and ``strong``: the
        profile has a claim besides anonymous ids (a profile without one is a shell).

        Without ``attributes`` the (large) attributes column stays in pandas until
        ``load_attributes`` asks for the profiles a batch touches."""
        self._stores[kind] = frame
        self.load(f"s_{kind}", frame, self._store_select(kind, attributes))
        self._store_attributes[kind] = attributes

    def extend_store(self, kind: Kind, frame: pd.DataFrame) -> None:
        """Add profiles to ``s_<kind>`` (read once identities are resolved: the users of the
        accounts a batch moves); attributes loaded for every profile are loaded again."""
        self._stores[kind] = pd.concat([self._stores[kind], frame], ignore_index=True)
        self.load("_more_store", frame, self._store_select(kind, self._store_attributes[kind]))
        self.sql(f"insert into s_{kind} select * from _more_store")
        self.drop("_more_store")
        if kind in self._all_attributes:
            self._all_attributes.discard(kind)
            self.drop(f"sa_{kind}")

    def _store_select(self, kind: Kind, attributes: bool) -> str:
        columns = [c for c in STORE_COLUMNS[kind] if attributes or c != "attributes"]
        typed = {c: f"{ident(c)}::{STORE_SQL_TYPES[c]}" for c in columns}
        typed["anonymous_ids"] = f"coalesce({typed['anonymous_ids']}, [])"
        other = "email" if kind == "user" else "domain"
        typed[other] = f"nullif(lower(trim({typed[other]})), '')"  # matched as claims are
        if attributes:
            typed["attributes"] = f"coalesce({typed['attributes']}, '{{}}')"
        strong = f"({other} is not null or external_id is not null) as strong"
        return ", ".join([*(f"{e} as {ident(c)}" for c, e in typed.items()), strong])

    def load_attributes(self, kind: Kind, ids_query: str | None = None) -> None:
        """``sa_<kind>(hull_id, attributes)`` for the profiles ``ids_query`` selects (None: all;
        once all are loaded, they stay until the table is dropped)."""
        if kind in self._all_attributes and self.scalar(
            "select count(*) from duckdb_tables() where table_name = ?", [f"sa_{kind}"]
        ):
            return
        if ids_query is None:
            self._all_attributes.add(kind)
        frame = self._stores[kind]
        if ids_query is not None:
            ids = self.frame(ids_query).iloc[:, 0]
            frame = frame[frame["hull_id"].isin(ids)]
        self.load(
            f"sa_{kind}",
            frame[["hull_id", "attributes"]],
            "hull_id::varchar as hull_id, coalesce(attributes::varchar, '{}') as attributes",
        )

    def export(self, query: str, shared: tuple[str, ...] = ()) -> pd.DataFrame:
        """``query`` as a DataFrame. ``shared`` columns have few distinct values: they cross as
        ENUM codes, so pandas holds one string object per value instead of one per row."""
        if not shared:
            return self.frame(query)
        self.sql(f"create or replace temp table _export as {query}")
        try:
            return self.export_table("_export", shared)
        finally:
            self.drop("_export")

    def export_table(
        self, table: str, shared: tuple[str, ...] = (), order_by: tuple[str, ...] = ()
    ) -> pd.DataFrame:
        """Table ``table`` as a DataFrame, ordered by the columns ``order_by``; ``shared``
        columns as in ``export`` (from ``SHARED_FROM_ROWS`` rows). Read in place: a first
        load's upserts are the largest table of a sync, and a copy of them made the sync's
        peak."""
        if shared and self.scalar(f"select count(*) from {table}") < SHARED_FROM_ROWS:
            shared = ()
        casts = []
        for column in shared:
            distinct = (
                f"select distinct {ident(column)} from {table} where {ident(column)} is not null"
            )
            self.sql(
                f"drop type if exists _enum_{column};"
                f" create temp type _enum_{column} as enum ({distinct})"
            )
            casts.append(f"{ident(column)}::_enum_{column} as {ident(column)}")
        replaced = f" replace ({', '.join(casts)})" if casts else ""
        # ordered by the stored values (a name alone would mean its ENUM code's order)
        order = (
            " order by " + ", ".join(f"{table}.{ident(c)}" for c in order_by) if order_by else ""
        )
        frame = self.frame(f"select *{replaced} from {table}{order}")
        for column in shared:
            frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
        return frame

    def canonicalize_nested(self, table: str, column: str) -> None:
        """Sort the keys of object and array values (in Python: only those values, once each)."""
        nested = self.con.execute(
            f"select distinct {column} as v from {table} where left({column}, 1) in ('{{', '[')"
        ).df()
        if nested.empty:
            return
        nested["c"] = [value_text(v) for v in nested["v"]]
        nested = nested[nested["v"] != nested["c"]]
        if nested.empty:
            return
        self.load("_canonical", nested)
        self.sql(
            f"update {table} set {column} = _canonical.c from _canonical"
            f" where {table}.{column} = _canonical.v"
        )


@contextmanager
def batch(threads: int | None = None) -> Iterator[Batch]:
    """A ``Batch`` closed on exit."""
    work = Batch(threads)
    try:
        yield work
    finally:
        work.close()
