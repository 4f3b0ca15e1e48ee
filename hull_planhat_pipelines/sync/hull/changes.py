"""One sync of the Hull profile store: map -> resolve -> diff, then apply.

``compute_changes`` turns source rows and the current store into change frames (what
``hull/user_upserts``, ``hull/account_upserts`` and ``hull/events`` hold); ``apply_changes``
(in ``hull.apply``) turns the store and those frames into the next store. Both are pure and
deterministic: the same inputs give the same frames, and a second run over unchanged sources
gives no rows at all.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from hull_planhat_pipelines.settings import Settings
from hull_planhat_pipelines.sync.hull.batch import Batch, batch, quote
from hull_planhat_pipelines.sync.hull.deletions import (
    DELETED_COLUMNS,
    removed_events,
    stage_deletions,
    stage_gone,
    stage_unlinks,
)
from hull_planhat_pipelines.sync.hull.diff import diff_attributes, diff_events, diff_links
from hull_planhat_pipelines.sync.hull.from_copper import (
    MAPPED_COLUMNS,
    CopperRows,
    map_copper,
    stage_opportunity_clears,
)
from hull_planhat_pipelines.sync.hull.from_planhat import PlanhatRows, map_planhat
from hull_planhat_pipelines.sync.hull.identity import resolve
from hull_planhat_pipelines.sync.hull.model import (
    CLAIM_COLUMNS,
    CONFLICT_COLUMNS,
    EVENT_COLUMNS,
    KINDS,
    LINK_COLUMNS,
    MERGE_COLUMNS,
    PLANHAT_OBJECTS,
    PLANHAT_PREFIX,
    UPSERT_COLUMNS,
    WRITER_CLAIM,
    Kind,
    normalize_store,
)
from hull_planhat_pipelines.sync.hull.rewrite import (
    empty_rewrites,
    export_rewrites,
    stage_rewrites,
)
from hull_planhat_pipelines.sync.log import LOG_ROW_COLUMNS, SyncEvent, empty_log_rows

CONFLICT_SAMPLE = 10


@dataclass(frozen=True)
class ProfileStore:
    """``hull.users``, ``hull.accounts`` and ``hull.events`` (None: empty)."""

    users: pd.DataFrame | None = None
    accounts: pd.DataFrame | None = None
    events: pd.DataFrame | None = None


@dataclass(frozen=True)
class Changes:
    """What one sync changes; every frame holds only real changes (columns in ``hull.model``).

    - ``user_upserts`` / ``account_upserts``: one row per (profile, attribute) change;
    - ``user_claims`` / ``account_claims``: identity claims gained (all of a new profile's);
    - ``links``: users whose account changes; ``merges``: shells absorbed by a profile;
    - ``conflicts``: claims not applied (they identify another profile, or the profile keeps
      another value); ``events``: new or changed ``hull.events`` rows;
    - ``log``: skips and per-kind summaries as ``SyncEvent``.
    """

    user_upserts: pd.DataFrame
    account_upserts: pd.DataFrame
    user_claims: pd.DataFrame
    account_claims: pd.DataFrame
    links: pd.DataFrame
    merges: pd.DataFrame
    conflicts: pd.DataFrame
    events: pd.DataFrame
    log: list[SyncEvent] = field(default_factory=list)
    record_log: pd.DataFrame = field(default_factory=empty_log_rows)
    """The per-record events (``incoming.<kind>.success``, ``incoming.event.success``) as
    ``sync.log.LOG_ROW_COLUMNS`` rows: one per record of a first load, built in SQL."""
    deleted: pd.DataFrame = field(default_factory=lambda: _empty(DELETED_COLUMNS))
    """Profiles detached from a record gone from Copper (``hull.deletions``)."""
    removed_events: pd.DataFrame = field(
        default_factory=lambda: _empty(["event_id", "user_hull_id", "source_id"])
    )
    """Events whose Copper activity was deleted: they leave ``hull.events``."""
    user_rows: pd.DataFrame = field(default_factory=lambda: empty_rewrites("user"))
    account_rows: pd.DataFrame = field(default_factory=lambda: empty_rewrites("account"))
    """The new rows of the profiles this sync rewrites (an upsert, a claim, or a user's link),
    built from the store the changes were computed against (``hull.rewrite.REWRITE_COLUMNS``):
    what ``apply_changes`` puts in place, stamped."""

    def upserts(self, kind: Kind) -> pd.DataFrame:
        return self.user_upserts if kind == "user" else self.account_upserts

    def claims(self, kind: Kind) -> pd.DataFrame:
        return self.user_claims if kind == "user" else self.account_claims

    def rows(self, kind: Kind) -> pd.DataFrame:
        return self.user_rows if kind == "user" else self.account_rows

    def touched_ids(self, kind: Kind) -> np.ndarray:
        """The ``hull_id`` of the ``kind`` profiles this sync rewrites (upserted, claimed, or
        a user linked to another account): those of its rewritten rows, once each."""
        return self.rows(kind)["hull_id"].to_numpy(dtype=object)

    @property
    def is_empty(self) -> bool:
        frames = (
            self.user_upserts,
            self.account_upserts,
            self.user_claims,
            self.account_claims,
            self.links,
            self.merges,
            self.events,
            self.removed_events,
        )
        return all(frame.empty for frame in frames)


def _empty(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype=object) for c in columns})


@dataclass(frozen=True)
class StoreKeys:
    """What the staged records name, for reading only the part of a large store a sync needs.

    ``claims(kind, claim, value)``: every identity value the records claim (their own record
    keys and the keys of conversions as ``anonymous_id``), matched the way the store is
    (emails and domains trimmed and lower-cased); ``event_ids``: the staged events;
    ``opportunities``: opportunity groups are re-judged (every profile holding one is needed).

    ``account_users``, set on a reader's second call only: the accounts whose users the sync
    moves, known once identities are resolved (merged away, or detached from a deleted
    company). The slice is then those accounts' users not read already, and nothing else.
    """

    claims: pd.DataFrame
    event_ids: pd.Series
    opportunities: bool
    account_users: pd.Series | None = None

    @staticmethod
    def users_of(accounts: pd.Series) -> StoreKeys:
        return StoreKeys(
            claims=pd.DataFrame({c: pd.Series([], dtype=object) for c in CLAIM_KEY_COLUMNS}),
            event_ids=pd.Series([], dtype=object),
            opportunities=False,
            account_users=accounts,
        )


CLAIM_KEY_COLUMNS = ("kind", "claim", "value")


@dataclass(frozen=True)
class StoreSlice:
    """The profiles, links and events a sync can touch, read from a store too large to load.

    It must hold every profile matching a key of ``StoreKeys``, every profile holding an
    anonymous id of a Copper record gone from ``copper_current`` since the store was last
    judged, the accounts of those users, the stored events of those users and of the staged
    event ids, and every stored Copper event whose activity is gone since then (the users of
    an account are read only when the sync moves them: ``StoreKeys.account_users``). An
    account's other users are not needed: only a merge or a detach changes them, and a
    segment an account change moves is recomputed from the store. ``current_ids`` are then the
    living ids among the Copper anonymous ids (and event activity ids) the slice holds, per
    ``copper_current`` table that exists: judging the slice judges the whole store.
    """

    store: ProfileStore
    current_ids: Mapping[str, pd.Series]


StoreReader = Callable[[StoreKeys], StoreSlice]
"""Reads the ``StoreSlice`` for the staged keys (the asset reads it from the warehouse in SQL);
asked a second time, once identities are resolved, for the users of the accounts the sync
moves when there are any (``StoreKeys.account_users``)."""


def _store_keys(work: Batch, opportunities: bool) -> StoreKeys:
    claims = work.frame(
        "select distinct kind, claim, value from ("
        " select kind, claim, value from in_claims"
        " union all select kind, 'anonymous_id', record_key from in_records"
        " union all select kind, 'anonymous_id', from_key from in_merges"
        " union all select kind, 'anonymous_id', into_key from in_merges"
        " union all select kind, 'anonymous_id', anonymous_id from in_gone"
        f" union all select kind, '{WRITER_CLAIM}', substr(anonymous_id,"
        f" {len(PLANHAT_PREFIX) + 1}) from in_gone"
        ") where nullif(value, '') is not null"
    )
    events = work.frame("select distinct event_id from in_events")["event_id"]
    return StoreKeys(claims=claims, event_ids=events, opportunities=opportunities)


@dataclass
class HandedRows:
    """Raw rows given to ``compute_changes`` to keep: it empties the holder, and lets the rows
    go once they are staged. Passed directly, rows stay referenced by the caller for the whole
    call (a first load's Copper rows are over a gigabyte at 100,000 people)."""

    copper: CopperRows | None = None
    planhat: PlanhatRows | None = None

    def take(self) -> tuple[CopperRows | None, PlanhatRows | None]:
        rows = (self.copper, self.planhat)
        self.copper = self.planhat = None
        return rows


def compute_changes(
    settings: Settings,
    store: ProfileStore | StoreReader,
    copper: CopperRows | HandedRows | None = None,
    planhat: PlanhatRows | None = None,
    *,
    threads: int | None = None,
    now: dt.datetime | None = None,
) -> Changes:
    """Map the given sources, resolve identities and diff against the store. ``now`` stamps
    ``<group>/deleted_at`` of records gone from Copper (default: the wall clock).

    ``store`` is the whole store, or a ``StoreReader`` asked, once the sources are staged, for
    the slice of it they can touch (the changes are the same; the cost is the slice's).
    ``copper`` may be ``HandedRows`` (both sources, released once staged)."""
    now = now or dt.datetime.now(dt.UTC)
    if isinstance(copper, HandedRows):
        copper, planhat = copper.take()
    clear_opportunities = (
        copper is not None and copper.opportunities is not None and copper.opportunities_complete
    )
    with batch(threads) as work:
        log: list[SyncEvent] = []
        current_ids = copper.current_ids if copper is not None else None
        if copper is not None:  # the store is loaded after: mapping never reads it
            frames = {name: getattr(copper, name) for name in MAPPED_COLUMNS}
            copper = None  # ``frames`` holds them alone: each goes once staged
            log += map_copper(work, frames, settings.copper)
        if planhat is not None:
            log += map_planhat(work, planhat, settings.planhat.incoming)
        # staged: the raw rows (a first load's are the largest frames of the sync) may go now
        copper = planhat = None
        reader = None if isinstance(store, ProfileStore) else store
        if reader is not None:
            part = reader(_store_keys(work, clear_opportunities))
            store, current_ids = part.store, part.current_ids
        for kind, frame in (("user", store.users), ("account", store.accounts)):
            work.load_store(kind, normalize_store(frame, kind))
        if clear_opportunities:
            stage_opportunity_clears(work, settings.copper.attributes.opportunity)
        deleted_at = now.astimezone(dt.UTC).isoformat()
        if current_ids:
            stage_deletions(work, current_ids, deleted_at)
        stage_gone(work, deleted_at)
        work.sql(
            "create temp table no_email as select record_key from in_records"
            " where kind = 'user' and not is_shell and source_object in ('lead', 'person')"
            " and record_key not in (select record_key from in_claims where claim = 'email')"
            " and record_key not in (select from_key from in_merges)"  # converted leads
        )
        for kind in KINDS:
            resolve(work, kind)
        if reader is not None:
            _read_moved_users(work, reader)
        stage_unlinks(work)
        work.drop("in_claims")
        for kind in KINDS:
            diff_attributes(work, kind)
        work.drop("in_attributes", "in_writes", "in_clears")
        diff_links(work)
        has_events = store.events is not None and not store.events.empty
        if has_events:
            _load_events(work, store.events)
        diff_events(work, has_events)
        for kind in KINDS:
            stage_rewrites(work, kind)
        changes = _export(work)
        removed = removed_events(store.events, (current_ids or {}).get("activities"))
        changes = replace(changes, removed_events=removed)
        records, record_log = _record_log(work, changes)
        return replace(
            changes, log=[*log, *records, *_summaries(work, changes)], record_log=record_log
        )


def _read_moved_users(work: Batch, reader: StoreReader) -> None:
    """Add to ``s_user`` the users of the accounts this batch moves (merged away, or detached
    from a deleted company) that the slice did not hold: their links follow the account."""
    accounts = work.frame(
        "select from_hull_id as hull_id from merges_account"
        " union select hull_id from unlinked_accounts"
    )["hull_id"]
    if accounts.empty:
        return
    users = reader(StoreKeys.users_of(accounts)).store.users
    held = work.frame("select hull_id from s_user")["hull_id"]
    users = users[~users["hull_id"].isin(held)]
    if not users.empty:
        work.extend_store("user", normalize_store(users.reset_index(drop=True), "user"))


def _load_events(work: Batch, events: pd.DataFrame) -> None:
    columns = ", ".join(
        f"{c}::{'timestamptz' if c == 'occurred_at' else 'varchar'} as {c}" for c in EVENT_COLUMNS
    )
    work.load("ex_events_all", events, columns)
    work.sql(
        "create or replace temp table ex_events as select * from ex_events_all"
        " where event_id in (select event_id from in_events)"
        " or user_hull_id in (select from_hull_id from merges_user);"
        "drop table ex_events_all"
    )


def _export(work: Batch) -> Changes:
    merges = " union all ".join(
        f"select '{k}' as kind, from_hull_id, into_hull_id from merges_{k}" for k in KINDS
    )
    conflicts = " union all ".join(f"select * from conflicts_{k}" for k in KINDS)
    # a profile's identity repeats on each of its attribute upserts, a record's on each of its
    # attributes: shared, they cost a pointer a row, not a string (a first load's million rows)
    shared = ("hull_id", "external_id", "anonymous_id", "attribute", "source_object", "source_id")
    # each staged table goes as soon as it is exported (the largest tables of a first load)
    user_upserts = work.export_table("upserts_user", (*shared, "email"))
    work.drop("upserts_user")
    account_upserts = work.export_table("upserts_account", (*shared, "domain"))
    work.drop("upserts_account")
    user_claims, account_claims = _claims(work, "user"), _claims(work, "account")
    user_rows, account_rows = export_rewrites(work, "user"), export_rewrites(work, "account")
    return Changes(
        user_upserts=user_upserts[UPSERT_COLUMNS["user"]],
        account_upserts=account_upserts[UPSERT_COLUMNS["account"]],
        user_claims=user_claims,
        account_claims=account_claims,
        links=work.frame("select * from links")[LINK_COLUMNS],
        merges=work.frame(f"select * from ({merges}) order by 1, 2")[MERGE_COLUMNS],
        conflicts=work.frame(f"select * from ({conflicts}) order by 1, 2, 3, 4")[CONFLICT_COLUMNS],
        events=work.frame("select * from events")[EVENT_COLUMNS],
        deleted=work.frame(
            "select d.kind, coalesce(m.into_hull_id, d.hull_id) as hull_id, d.source_object,"
            " d.source_id, d.anonymous_id from deleted d left join (select 'user' as kind, *"
            " from merges_user union all select 'account', * from merges_account) m"
            " on m.kind = d.kind and m.from_hull_id = d.hull_id order by 1, 2, 3, 4"
        )[DELETED_COLUMNS],
        user_rows=user_rows,
        account_rows=account_rows,
    )


def _claims(work: Batch, kind: Kind) -> pd.DataFrame:
    shared = ("hull_id", "claim", "source_object", "source_id")
    claims = work.export_table(f"claims_{kind}", shared, ("hull_id", "claim", "value"))[
        CLAIM_COLUMNS
    ]
    work.drop(f"claims_{kind}")
    return claims


NO_EMAIL = "No email: identified by its anonymous id only"
_OBJECT_KIND = {"opportunity": "account"}


def _event(event: str, **fields: object) -> SyncEvent:
    """A SyncEvent of a known-good name without validation (one per record adds up)."""
    fields.setdefault("details", {})
    return SyncEvent.model_construct(event=event, **fields)


def _json_text(*keys: str) -> str:
    """SQL: canonical JSON text (``canonical_json``'s form) of the columns ``keys``, sorted by
    name; the values are identifiers (ASCII), so DuckDB's ``to_json`` writes them as Python's
    ``json.dumps`` does."""
    fields = [f"'\"{k}\": ' || coalesce(to_json({k})::varchar, 'null')" for k in sorted(keys)]
    return "'{' || " + " || ', ' || ".join(fields) + " || '}'"


def _record_log(work: Batch, changes: Changes) -> tuple[list[SyncEvent], pd.DataFrame]:
    """One ``ops.sync_log`` row per record: ``incoming.<kind>.success`` (with the profile it
    resolved to, and a reason when a lead or person has no email) and
    ``incoming.event.success``, in bulk (a frame); ``.merged``, ``.deleted`` and ``.skip`` for
    claims not applied, as events (few)."""
    out: list[SyncEvent] = []
    selects = []
    for kind in KINDS:
        opportunities = (  # logged once, on their account
            " union all select distinct i.source_object, i.source_id, res.hull_id, false"
            " from in_records i join res_account res using (record_key)"
            " where i.kind = 'account' and i.source_object = 'opportunity'"
            if kind == "account"
            else ""
        )
        selects.append(
            f"select {KINDS.index(kind)} as part, 'incoming.{kind}.success' as event,"
            " source_object as object_type, source_id as object_id,"
            f" case when no_email then {quote(NO_EMAIL)} end as reason,"
            f" {_json_text('hull_id')} as details, source_object as o1,"
            " try_cast(source_id as bigint) as o2, source_id as o3"
            " from (select r.source_object, r.source_id, res.hull_id,"
            " r.record_key in (select record_key from no_email) as no_email"
            f" from r_{kind} r join res_{kind} res using (record_key) where not r.is_shell"
            f"{opportunities})"
        )
    selects.append(
        f"select {len(KINDS)} as part, 'incoming.event.success' as event,"
        " 'activity' as object_type, source_id as object_id, null as reason,"
        f" {_json_text('event_id', 'hull_id')} as details, event_id as o1, null as o2,"
        " null as o3 from (select source_id, event_id, user_hull_id as hull_id from ev)"
    )
    columns = ", ".join(LOG_ROW_COLUMNS)
    rows = work.export(
        f"select {columns} from ({' union all '.join(selects)}) order by part, o1, o2, o3",
        ("event", "object_type", "reason"),
    )
    for row in changes.merges.itertuples(index=False):
        out.append(
            _event(
                f"incoming.{row.kind}.merged",
                object_type="profile",
                object_id=row.from_hull_id,
                reason="Merged into another profile",
                details={"into_hull_id": row.into_hull_id},
            )
        )
    for row in changes.deleted.itertuples(index=False):
        out.append(
            _event(
                f"incoming.{row.kind}.deleted",
                object_type=row.source_object,
                object_id=row.source_id,
                reason=(
                    "Deleted in Planhat (absent from two snapshots): detached from its profile"
                    if str(row.source_object) in PLANHAT_OBJECTS.values()
                    else "Deleted in Copper: detached from its profile"
                ),
                details={"hull_id": row.hull_id, "anonymous_id": row.anonymous_id},
            )
        )
    for row in changes.conflicts.itertuples(index=False):
        out.append(
            _event(
                f"incoming.{row.kind}.skip",
                object_type="claim",
                object_id=row.record,
                reason=f"Claim not applied: {row.reason}",
                details={
                    "claim": row.claim,
                    "value": row.value,
                    "hull_id": row.resolved_hull_id,
                    "other_hull_id": None if pd.isna(row.other_hull_id) else row.other_hull_id,
                },
            )
        )
    out += [
        _event(
            "incoming.event.deleted",
            object_type="activity",
            object_id=str(row.source_id),
            reason="Deleted in Copper: event removed",
            details={"event_id": row.event_id, "hull_id": row.user_hull_id},
        )
        for row in changes.removed_events.itertuples(index=False)
    ]
    return out, rows


def _summaries(work: Batch, changes: Changes) -> list[SyncEvent]:
    """One ``incoming.<kind>.success`` per kind (counts, conflicts with samples) and one
    ``incoming.event.success``."""
    out = []
    for kind in KINDS:
        upserts, claims = changes.upserts(kind), changes.claims(kind)
        created = claims.loc[claims["is_new_profile"], "hull_id"].nunique()
        touched = len(changes.touched_ids(kind))
        conflicts = changes.conflicts[changes.conflicts["kind"] == kind]
        details = {
            "records": int(work.scalar(f"select count(*) from r_{kind} where not is_shell")),
            "profiles_created": int(created),
            "profiles_updated": touched - int(created),
            "attribute_upserts": len(upserts),
            "claims_added": len(claims),
            "merged_shells": int((changes.merges["kind"] == kind).sum()),
            "conflicts": conflicts["reason"].value_counts().sort_index().to_dict(),
            "conflict_samples": conflicts.head(CONFLICT_SAMPLE)
            .astype(object)
            .where(conflicts.head(CONFLICT_SAMPLE).notna(), None)
            .to_dict("records"),
        }
        out.append(SyncEvent(event=f"incoming.{kind}.success", details=details))
    out.append(SyncEvent(event="incoming.event.success", details={"events": len(changes.events)}))
    return out
