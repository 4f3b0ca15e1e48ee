"""Attribute, link and event diffs of a resolved batch against the profile store.

Only what differs from the store becomes a row. Rules:
- One record writes a group on a profile: when several records resolved to one profile write
  the same group (two opportunities of one type, two people with one email), the latest
  ``modified_at`` wins, then the larger source id: deterministic, whatever the input order.
- Null vs missing: a field the source lacks has no staged row, so it changes nothing; a null
  value clears the attribute if the profile has it, and changes nothing if it does not.
- Values compare as canonical JSON text (sorted keys; an integral number is the same value
  as its ``.0`` float): ``{"amount": 1.0, "currency": "USD"}`` equals
  ``{"currency":"USD","amount":1}``.
- Clears staged for known profiles (deleted opportunities) apply only where no record of the
  batch writes the attribute. A merged shell's attributes move to its profile where that
  profile has no value of its own.
"""

from __future__ import annotations

from hull_planhat_pipelines.sync.hull.batch import Batch, quote
from hull_planhat_pipelines.sync.hull.deletions import DELETED_AT, DETACHABLE_GROUPS
from hull_planhat_pipelines.sync.hull.model import DOMAIN_CLAIM, UPSERT_COLUMNS, Kind

_WINNER = (
    "modified_at desc nulls last, try_cast(source_id as bigint) desc nulls last,"
    " source_id desc, record_key desc"
)


def diff_attributes(batch: Batch, k: Kind) -> None:
    """``upserts_<kind>``: one row per (profile, attribute) whose value changes. The kind's
    staged ``in_attributes`` rows are consumed: once its wanted values are built they leave the
    batch (a first load's, kept beside the wanted values and the upserts, made its peak).
    ``cur_<kind>`` stays, for the profiles with an upsert only, for the rewritten rows
    (``hull.rewrite``)."""
    _wanted(batch, k)
    batch.sql(
        "create or replace temp table in_attributes as"
        f" select * from in_attributes where kind <> '{k}'"
    )
    _current(batch, k)
    _with_merged_values(batch, k)
    _profiles(batch, k)
    columns = ", ".join(UPSERT_COLUMNS[k])
    batch.sql(
        f"create or replace temp table upserts_{k} as select {columns} from ("
        f" select w.hull_id, p.claim as {DOMAIN_CLAIM[k]}, p.external_id, w.anonymous_id,"
        " w.attribute, w.value, c.value as previous, w.source_object, w.source_id,"
        " p.is_new as is_new_profile"
        f" from want_{k} w left join cur_{k} c using (hull_id, attribute)"
        f" join prof_{k} p using (hull_id)"
        " where w.value is distinct from c.value) order by hull_id, attribute"
    )
    batch.drop(*(f"{t}_{k}" for t in ("want", "prof", "touched", "writers", "losers")))
    # only a profile with an upsert has its attributes rewritten: the stored values of the
    # others (a "fetch all" touches every profile) need not wait for the rewrite
    batch.sql(f"delete from cur_{k} where hull_id not in (select hull_id from upserts_{k})")


def _wanted(batch: Batch, k: Kind) -> None:
    """The value each touched (profile, attribute) should have. One record writes a group on a
    profile: when several do, the others are losers (found among the few shared groups)."""
    batch.sql(
        f"create or replace temp table writers_{k} as select res.hull_id, w.attr_group,"
        " w.record_key, w.source_object, w.source_id, w.modified_at"
        f" from in_writes w join res_{k} res using (record_key) where w.kind = '{k}';"
        f"create or replace temp table losers_{k} as select record_key, attr_group, source_id"
        f" from writers_{k} semi join (select hull_id, attr_group from writers_{k}"
        " group by hull_id, attr_group having count(*) > 1) using (hull_id, attr_group)"
        f" qualify row_number() over (partition by hull_id, attr_group order by {_WINNER}) > 1;"
        f"create or replace temp table want_{k} as"
        " select res.hull_id, a.attribute, a.value, a.source_object, a.source_id,"
        " a.record_key as anonymous_id"
        f" from in_attributes a join res_{k} res using (record_key)"
        f" anti join losers_{k} l using (record_key, attr_group, source_id)"
        f" where a.kind = '{k}';"
        f"create or replace temp table clear_{k} as"
        " select coalesce(g.into_hull_id, c.hull_id) as hull_id, c.attribute,"
        " null::varchar as value, c.source_object, c.source_id, null::varchar as anonymous_id"
        f" from in_clears c left join merges_{k} g on g.from_hull_id = c.hull_id"
        f" where c.kind = '{k}'"
        " qualify row_number() over (partition by coalesce(g.into_hull_id, c.hull_id),"
        " c.attribute order by c.source_id) = 1;"
        f"delete from clear_{k} using want_{k} w"
        f" where clear_{k}.hull_id = w.hull_id and clear_{k}.attribute = w.attribute;"
        f"insert into want_{k} select * from clear_{k};"
        f"drop table clear_{k}"
    )
    _detaches(batch, k)
    batch.canonicalize_nested(f"want_{k}", "value")


def _detaches(batch: Batch, k: Kind) -> None:
    """``<group>/deleted_at`` of records gone (``hull.deletions``), unless a record of the batch
    writes that group on the profile (one came back, or another took its place: a company
    recreated in Planhat), and its clear on a profile whose record of that group writes."""
    batch.sql(
        f"insert into want_{k} select coalesce(g.into_hull_id, s.hull_id), s.attribute,"
        " s.value, s.source_object, s.source_id, s.anonymous_id"
        f" from in_sets s left join merges_{k} g on g.from_hull_id = s.hull_id"
        f" anti join want_{k} w on w.hull_id = coalesce(g.into_hull_id, s.hull_id)"
        " and w.attribute = s.attribute"
        f" anti join writers_{k} x on x.hull_id = coalesce(g.into_hull_id, s.hull_id)"
        f" and x.attr_group || '/{DELETED_AT}' = s.attribute where s.kind = '{k}'"
    )
    groups = "[" + ", ".join(quote(g) for g in DETACHABLE_GROUPS) + "]"
    batch.sql(
        f"insert into want_{k} select distinct on (hull_id, attr_group) hull_id,"
        f" attr_group || '/{DELETED_AT}', null, source_object, source_id, record_key"
        f" from writers_{k} w where list_contains({groups}, attr_group)"
        f" and not exists (select 1 from want_{k} x where x.hull_id = w.hull_id"
        f" and x.attribute = w.attr_group || '/{DELETED_AT}')"
        " order by hull_id, attr_group, source_id"
    )


def _profiles(batch: Batch, k: Kind) -> None:
    """Per touched profile: its claims after this batch (for readable upsert rows), new or not."""
    other = DOMAIN_CLAIM[k]
    batch.sql(
        f"create or replace temp table prof_{k} as select t.hull_id,"
        f" coalesce(c.claim, s.{other}) as claim, coalesce(s.external_id, c.external_id)"
        " as external_id, coalesce(n.is_new, false) as is_new"
        f" from touched_{k} t left join s_{k} s using (hull_id)"
        f" left join (select hull_id, max(value) filter (where claim = '{other}') as claim,"
        " max(value) filter (where claim = 'external_id') as external_id"
        f" from claims_{k} where claim <> 'anonymous_id' group by hull_id) c using (hull_id)"
        f" left join (select distinct hull_id, true as is_new from res_{k} where is_new) n"
        " using (hull_id)"
    )


def _current(batch: Batch, k: Kind) -> None:
    """The stored values of the touched profiles (and of shells merged into them): ``value``
    canonical, to compare; ``raw`` as stored, to write back unchanged, where the two can differ
    (a number, an object, an array; null for the rest, the most of a "fetch all"'s millions)."""
    batch.sql(
        f"create or replace temp table touched_{k} as select distinct hull_id from want_{k}"
        f" union select into_hull_id from merges_{k} union select from_hull_id from merges_{k};"
    )
    batch.load_attributes(k, f"select hull_id from touched_{k}")
    # each object parsed into its entries as a map, not joined to ``json_each`` (which DuckDB
    # decorrelates into a join on the whole attributes text: 29 ms against 22 ms for 7,000
    # profiles); the strict parse refuses a duplicate key or a stored value that is no object
    entries = (
        f"select hull_id, unnest(map_entries(json_transform_strict(attributes,"
        f" '\"MAP(VARCHAR, JSON)\"'))) as e from sa_{k} semi join touched_{k} using (hull_id)"
    )
    batch.sql(
        f"create or replace temp table cur_{k} as select hull_id, e.key as attribute,"
        " case when t = 'DOUBLE' then hull_canonical_scalar(e.value::varchar)"
        " else e.value::varchar end as value, case when t in ('DOUBLE', 'OBJECT', 'ARRAY')"
        " then e.value::varchar end as raw"
        f" from (select hull_id, e, json_type(e.value) as t from ({entries})) where t <> 'NULL';"
        f"drop table sa_{k}"
    )
    batch.canonicalize_nested(f"cur_{k}", "value")


_GROUP = "regexp_extract({}, '^(.*)/[^/]*$', 1)"


def _with_merged_values(batch: Batch, k: Kind) -> None:
    """A merged profile's groups move to the profile it merged into, each group whole, where
    neither the batch nor that profile has the group (they are upserts of the profile; the
    merged one disappears). A group both have keeps the surviving profile's values."""
    group = _GROUP.format("c.attribute")
    batch.sql(
        f"create or replace temp table _kept_groups as select distinct hull_id,"
        f" {_GROUP.format('attribute')} as grp from (select hull_id, attribute from want_{k}"
        f" where value is not null union all select hull_id, attribute from cur_{k})"
        f" where hull_id in (select into_hull_id from merges_{k});"
        f"insert into want_{k} select g.into_hull_id, c.attribute, c.value, 'merge',"
        " g.from_hull_id, null"
        f" from merges_{k} g join cur_{k} c on c.hull_id = g.from_hull_id"
        f" anti join _kept_groups t on t.hull_id = g.into_hull_id and t.grp = {group}"
        " qualify row_number() over (partition by g.into_hull_id, c.attribute"
        " order by g.from_hull_id) = 1;"
        "drop table _kept_groups"
    )


def diff_links(batch: Batch) -> None:
    """``links``: users whose account changes (the latest linking record wins; users of a
    merged account follow it; a profile absorbing a shell takes the shell's account if it has
    none). The staged ``in_links`` are consumed."""
    batch.sql(
        "create or replace temp table lk as"
        " select ru.hull_id as user_hull_id, ra.hull_id as account_hull_id, l.source_object,"
        " l.source_id from in_links l join res_user ru on ru.record_key = l.user_key"
        " join res_account ra on ra.record_key = l.account_key"
        " qualify row_number() over (partition by ru.hull_id order by l.modified_at desc"
        " nulls last, l.source_object, l.source_id desc, ra.hull_id) = 1;"
        # users whose account was merged away, and shells' accounts for their new profile
        "insert into lk select s.hull_id, g.into_hull_id, 'merge', g.from_hull_id"
        " from s_user s join merges_account g on g.from_hull_id = s.account_hull_id"
        " anti join lk on lk.user_hull_id = s.hull_id;"
        "insert into lk select gu.into_hull_id, coalesce(ga.into_hull_id, f.account_hull_id),"
        " 'merge', gu.from_hull_id"
        " from merges_user gu join s_user f on f.hull_id = gu.from_hull_id"
        " join s_user t on t.hull_id = gu.into_hull_id"
        " left join merges_account ga on ga.from_hull_id = f.account_hull_id"
        " anti join lk on lk.user_hull_id = gu.into_hull_id"
        " where f.account_hull_id is not null and t.account_hull_id is null"
        " qualify row_number() over (partition by gu.into_hull_id order by gu.from_hull_id) = 1;"
        # a person pointing at a deleted company stays off it (the company may come back)
        "delete from lk where source_object = 'person'"
        " and account_hull_id in (select hull_id from gone_accounts);"
        # people whose company was removed leave their Copper account
        "insert into lk select distinct on (ru.hull_id) ru.hull_id, null, l.source_object,"
        " l.source_id from in_links l join res_user ru on ru.record_key = l.user_key"
        " join s_user su on su.hull_id = ru.hull_id"
        " join s_account sa on sa.hull_id = su.account_hull_id"
        " anti join lk on lk.user_hull_id = ru.hull_id"
        " where l.account_key is null and len(list_filter(sa.anonymous_ids,"
        " lambda x: starts_with(x, 'copper:'))) > 0;"
        # users of deleted companies leave the account
        "insert into lk select u.user_hull_id, null, u.source_object, u.source_id"
        " from (select * from in_unlinks qualify row_number() over (partition by user_hull_id"
        " order by source_id) = 1) u anti join lk on lk.user_hull_id = u.user_hull_id;"
        "create or replace temp table links as"
        " select lk.user_hull_id, lk.account_hull_id, s.account_hull_id"
        " as previous_account_hull_id, lk.source_object, lk.source_id"
        " from lk left join s_user s on s.hull_id = lk.user_hull_id"
        " anti join merges_user g on g.from_hull_id = lk.user_hull_id"
        " where lk.account_hull_id is distinct from s.account_hull_id"
        " order by lk.user_hull_id"
    )
    batch.drop("lk", "in_links")  # a first load's links, twice, beside its upserts


def diff_events(batch: Batch, has_store: bool) -> None:
    """``events``: new or changed events (each activity once, keyed by event id), and stored
    events of merged shells moved to their profile. Needs ``ex_events`` when ``has_store``."""
    batch.sql(
        "create or replace temp table ev as"
        " select e.event_id, r.hull_id as user_hull_id, e.name, e.properties, e.occurred_at,"
        " e.source, e.source_id"
        " from in_events e join res_user r on r.record_key = e.user_key"
        " qualify row_number() over (partition by e.event_id order by e.occurred_at desc"
        " nulls last, e.properties) = 1"
    )
    if not has_store:
        batch.sql("create or replace temp table events as select * from ev order by event_id")
        return
    same = " and ".join(
        f"ev.{c} is not distinct from x.{c}"
        for c in ("user_hull_id", "name", "properties", "occurred_at", "source", "source_id")
    )
    batch.sql(
        "insert into ev select x.event_id, g.into_hull_id, x.name, x.properties,"
        " x.occurred_at, x.source, x.source_id"
        " from ex_events x join merges_user g on g.from_hull_id = x.user_hull_id"
        " anti join ev using (event_id);"
        "create or replace temp table events as select ev.* from ev"
        f" anti join ex_events x on x.event_id = ev.event_id and {same}"
        " order by event_id"
    )
