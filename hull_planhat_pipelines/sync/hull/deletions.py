"""Records gone from Copper or Planhat detach from their profiles (they are never erased).

A record deleted in Copper leaves ``copper_current.<object>`` at the next full refresh. A
profile that still carries its anonymous id (``copper-lead:N``, ``copper-person:N``,
``copper:N``) and the source's group is then detached, the way Hull itself detaches rather than
erases:

- the source's attribute group is cleared and ``<group>/deleted_at`` set (ISO time of the sync
  that noticed), e.g. ``copper_person/deleted_at``;
- the profile, its claims and the anonymous id stay: a record that comes back (restored in
  Copper, or re-created) lands on the same profile and clears ``deleted_at``;
- a deleted company's account loses its users (``links`` to no account);
- a deleted activity's event is removed.

A profile that also carries a living record of the same object (two people with one email,
one deleted) keeps the group: the living one writes it. Objects whose ``copper_current`` table
does not exist are not judged at all (nothing was ever fetched, so nothing can be missing).

Planhat cannot say what it deleted, and a listing by offset can miss a record: an enduser or
company absent from two snapshots in a row is gone (``in_gone``, staged by
``hull.from_planhat``), and the ``planhat/`` group it wrote (``planhat/id``) detaches the same
way (no account loses its users: their links come from Copper too).
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from hull_planhat_pipelines.sync.canonical import value_json
from hull_planhat_pipelines.sync.hull.batch import Batch, quote
from hull_planhat_pipelines.sync.hull.model import (
    COPPER_COMPANY_GROUP,
    COPPER_LEAD_GROUP,
    COPPER_PERSON_GROUP,
    KINDS,
    PLANHAT_GROUP,
    PLANHAT_OBJECTS,
    PLANHAT_PREFIX,
    PLANHAT_WRITER_PATH,
    Kind,
)

DELETED_AT = "deleted_at"
DETACHABLE = (
    # copper_current table, kind, anonymous id prefix, group, source_object
    ("leads", "user", "copper-lead:", COPPER_LEAD_GROUP, "lead"),
    ("people", "user", "copper-person:", COPPER_PERSON_GROUP, "person"),
    ("companies", "account", "copper:", COPPER_COMPANY_GROUP, "company"),
)
DETACHABLE_GROUPS = (*(group for *_, group, _ in DETACHABLE), PLANHAT_GROUP)
DELETED_COLUMNS = ["kind", "hull_id", "source_object", "source_id", "anonymous_id"]


def stage_deletions(batch: Batch, current_ids: Mapping[str, pd.Series], deleted_at: str) -> None:
    """Stage the detaches of profiles whose Copper record is gone (needs ``s_user`` and
    ``s_account``): clears in ``in_clears``, ``deleted_at`` in ``in_sets``, detached accounts in
    ``unlinked_accounts`` (``stage_unlinks`` then detaches their users), and one ``deleted`` row
    per (profile, record)."""
    stamp = quote(value_json(deleted_at))
    for table, kind, prefix, group, source_object in DETACHABLE:
        ids = current_ids.get(table)
        if ids is None:
            continue
        batch.load(
            "_alive", pd.DataFrame({"id": pd.Series(ids, dtype="string")}), "id::varchar as id"
        )
        start = len(prefix) + 1
        batch.sql(
            "create or replace temp table _held as select hull_id, value as anonymous_id,"
            f" substr(value, {start}) as source_id,"
            f" substr(value, {start}) in (select id from _alive) as alive"
            f" from (select hull_id, unnest(anonymous_ids) as value from s_{kind})"
            f" where starts_with(value, {quote(prefix)})"
            # the id part only: 'copper:' must not take 'copper-person:' ids
            f" and regexp_full_match(substr(value, {start}), '[0-9]+')"
        )
        batch.sql(
            "create or replace temp table _gone as select * exclude (alive) from _held"
            " where not alive and hull_id not in (select hull_id from _held where alive)"
        )
        batch.drop("_alive", "_held")
        _detach(batch, kind, group, source_object, stamp, unlink=kind == "account")


def stage_gone(batch: Batch, deleted_at: str) -> None:
    """Stage the detaches of the profiles whose ``planhat/`` group a record ``in_gone`` names
    wrote (``planhat/id``; a profile written before it existed: the one holding the record's
    anonymous id), as ``stage_deletions`` does for Copper's. A living Planhat record on such a
    profile is handed over again with the deletion (``warehouse.planhat_snapshots``): it
    writes the group whole, and the detach stands only where no record writes it."""
    stamp = quote(value_json(deleted_at))
    writer = quote(PLANHAT_WRITER_PATH)
    start = len(PLANHAT_PREFIX) + 1
    for kind in KINDS:
        if not batch.scalar(f"select count(*) from in_gone where kind = '{kind}'"):
            continue
        batch.load_attributes(kind)
        batch.sql(
            "create or replace temp table _ids as select substr(anonymous_id, "
            f"{start}) as id from in_gone where kind = '{kind}';"
            "create or replace temp table _writer as select hull_id,"
            f" json_extract_string(attributes, {writer}) as writer from sa_{kind};"
            "create or replace temp table _gone as"
            f" select hull_id, {quote(PLANHAT_PREFIX)} || writer as anonymous_id,"
            " writer as source_id from _writer where writer in (select id from _ids)"
            " union all select hull_id, value, substr(value, "
            f"{start}) from (select hull_id, unnest(anonymous_ids) as value from s_{kind})"
            " where substr(value, "
            f"{start}) in (select id from _ids) and starts_with(value, {quote(PLANHAT_PREFIX)})"
            " and hull_id in (select hull_id from _writer where writer is null)"
        )
        batch.drop("_ids", "_writer")
        _detach(batch, kind, PLANHAT_GROUP, PLANHAT_OBJECTS[kind], stamp, unlink=False)


def _detach(
    batch: Batch, kind: Kind, group: str, source_object: str, stamp: str, *, unlink: bool
) -> None:
    """Clear ``group`` and set its ``deleted_at`` on the profiles of ``_gone`` (``hull_id``,
    ``anonymous_id`` and ``source_id`` of the record gone)."""
    if not batch.scalar("select count(*) from _gone"):
        batch.drop("_gone")
        return
    batch.load_attributes(kind, "select distinct hull_id from _gone")
    batch.sql(
        "create or replace temp table _group as select s.hull_id, j.key as attribute"
        f" from (select * from sa_{kind} semi join _gone using (hull_id)) s,"
        " json_each(s.attributes) j"
        f" where starts_with(j.key, {quote(group + '/')})"
        f" and j.key <> {quote(f'{group}/{DELETED_AT}')} and j.type <> 'NULL';"
        # one record per profile names the detach (the smallest id when several are gone)
        "create or replace temp table _detach as select hull_id,"
        " min(source_id) as source_id, min(anonymous_id) as anonymous_id"
        " from _gone semi join _group using (hull_id) group by hull_id;"
        f"insert into in_clears select '{kind}', g.hull_id, g.attribute, '{source_object}',"
        " d.source_id from _group g join _detach d using (hull_id);"
        f"insert into in_sets select '{kind}', hull_id, {quote(f'{group}/{DELETED_AT}')},"
        f" {stamp}, '{source_object}', source_id, anonymous_id from _detach;"
        f"insert into deleted select '{kind}', hull_id, '{source_object}', source_id,"
        " anonymous_id from _detach"
    )
    if unlink:
        # a person still pointing at a deleted company is not linked to it again; its users
        # leave it once they are read (``stage_unlinks``)
        batch.sql(
            "insert into unlinked_accounts select hull_id, source_id from _detach;"
            "insert into gone_accounts select hull_id from _detach union select hull_id"
            f" from sa_account semi join _gone using (hull_id) where contains(attributes,"
            f" {quote(chr(34) + group + '/' + DELETED_AT + chr(34))})"
        )
    batch.drop("_gone", "_group", "_detach", f"sa_{kind}")


def stage_unlinks(batch: Batch) -> None:
    """``in_unlinks``: the users of the accounts a deleted company detached (needs every user of
    those accounts in ``s_user``: a sync reading a slice reads them once identities are
    resolved)."""
    batch.sql(
        "insert into in_unlinks select u.hull_id, 'company', d.source_id"
        " from s_user u join unlinked_accounts d on d.hull_id = u.account_hull_id"
    )


def removed_events(events: pd.DataFrame | None, activity_ids: pd.Series | None) -> pd.DataFrame:
    """Stored Copper events whose activity is gone from ``copper_current.activities``."""
    columns = ["event_id", "user_hull_id", "source_id"]
    if events is None or events.empty or activity_ids is None:
        return pd.DataFrame({c: pd.Series([], dtype=object) for c in columns})
    alive = set(pd.Series(activity_ids).astype(str))
    copper = events[events["source"] == "copper"]
    gone = copper[~copper["source_id"].astype(str).isin(alive)]
    return gone[columns].astype(object).reset_index(drop=True)
