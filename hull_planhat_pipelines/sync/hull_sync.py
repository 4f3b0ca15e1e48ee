"""One sync of the Hull profile store: map -> resolve -> diff, then apply.

``compute_changes`` turns source rows and the current store into change frames (what
``hull/user_upserts``, ``hull/account_upserts`` and ``hull/events`` hold); ``apply_changes``
(in ``hull_apply``) turns the store and those frames into the next store. Both are pure and
deterministic: the same inputs give the same frames, and a second run over unchanged sources
gives no rows at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from hull_planhat_pipelines.settings import Settings
from hull_planhat_pipelines.sync.copper_mapping import CopperRows, map_copper
from hull_planhat_pipelines.sync.diff import diff_attributes, diff_events, diff_links
from hull_planhat_pipelines.sync.hull_batch import Batch, batch
from hull_planhat_pipelines.sync.hull_model import (
    CLAIM_COLUMNS,
    CONFLICT_COLUMNS,
    EVENT_COLUMNS,
    KINDS,
    LINK_COLUMNS,
    MERGE_COLUMNS,
    UPSERT_COLUMNS,
    Kind,
    normalize_store,
)
from hull_planhat_pipelines.sync.identity import resolve
from hull_planhat_pipelines.sync.log import SyncEvent
from hull_planhat_pipelines.sync.planhat_mapping import PlanhatRows, map_planhat

CONFLICT_SAMPLE = 10


@dataclass(frozen=True)
class ProfileStore:
    """``hull.users``, ``hull.accounts`` and ``hull.events`` (None: empty)."""

    users: pd.DataFrame | None = None
    accounts: pd.DataFrame | None = None
    events: pd.DataFrame | None = None


@dataclass(frozen=True)
class Changes:
    """What one sync changes; every frame holds only real changes (columns in ``hull_model``).

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

    def upserts(self, kind: Kind) -> pd.DataFrame:
        return self.user_upserts if kind == "user" else self.account_upserts

    def claims(self, kind: Kind) -> pd.DataFrame:
        return self.user_claims if kind == "user" else self.account_claims

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
        )
        return all(frame.empty for frame in frames)


def compute_changes(
    settings: Settings,
    store: ProfileStore,
    copper: CopperRows | None = None,
    planhat: PlanhatRows | None = None,
    *,
    threads: int | None = None,
) -> Changes:
    """Map the given sources, resolve identities and diff against the store."""
    with batch(threads) as work:
        for kind, frame in (("user", store.users), ("account", store.accounts)):
            work.load_store(kind, normalize_store(frame, kind))
        log: list[SyncEvent] = []
        if copper is not None:
            log += map_copper(work, copper, settings.copper)
        if planhat is not None:
            log += map_planhat(work, planhat, settings.planhat.incoming)
        for kind in KINDS:
            resolve(work, kind)
        work.drop("in_claims")
        for kind in KINDS:
            diff_attributes(work, kind)
        work.drop("in_attributes", "in_writes", "in_clears")
        diff_links(work)
        has_events = store.events is not None and not store.events.empty
        if has_events:
            _load_events(work, store.events)
        diff_events(work, has_events)
        changes = _export(work)
        return Changes(**{**changes.__dict__, "log": [*log, *_summaries(work, changes)]})


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
    shared = ("attribute", "source_object")
    return Changes(
        user_upserts=work.export("select * from upserts_user", shared)[UPSERT_COLUMNS["user"]],
        account_upserts=work.export("select * from upserts_account", shared)[
            UPSERT_COLUMNS["account"]
        ],
        user_claims=_claims(work, "user"),
        account_claims=_claims(work, "account"),
        links=work.frame("select * from links")[LINK_COLUMNS],
        merges=work.frame(f"select * from ({merges}) order by 1, 2")[MERGE_COLUMNS],
        conflicts=work.frame(f"select * from ({conflicts}) order by 1, 2, 3, 4")[CONFLICT_COLUMNS],
        events=work.frame("select * from events")[EVENT_COLUMNS],
    )


def _claims(work: Batch, kind: Kind) -> pd.DataFrame:
    query = f"select * from claims_{kind} order by hull_id, claim, value"
    return work.export(query, ("claim", "source_object"))[CLAIM_COLUMNS]


def _summaries(work: Batch, changes: Changes) -> list[SyncEvent]:
    """One ``incoming.<kind>.success`` per kind (counts, conflicts with samples) and one
    ``incoming.event.success``."""
    out = []
    for kind in KINDS:
        upserts, claims = changes.upserts(kind), changes.claims(kind)
        created = claims.loc[claims["is_new_profile"], "hull_id"].nunique()
        touched = set(upserts["hull_id"]) | set(claims["hull_id"])
        if kind == "user":
            touched |= set(changes.links["user_hull_id"])
        conflicts = changes.conflicts[changes.conflicts["kind"] == kind]
        details = {
            "records": int(work.scalar(f"select count(*) from r_{kind} where not is_shell")),
            "profiles_created": int(created),
            "profiles_updated": len(touched) - int(created),
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
