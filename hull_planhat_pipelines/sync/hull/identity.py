"""Identity resolution: which profile each staged record belongs to.

Rules (DESIGN.md section 2), as set operations over the whole batch:
1. A record matches existing profiles through its claims; it resolves to the profile found by
   external id, else email (domain for accounts), else its own anonymous id, else another
   anonymous id it claims (a converted lead's). Ties between profiles
   holding the same claim: a profile with a strong claim (email, domain or external id) over a
   shell, then the oldest, then the smallest hull_id.
2. Records of one batch that share any claim, transitively, form a group (connected
   components). A record with no strong match of its own joins its group's best match; a group
   with no match at all is one new profile whose hull_id derives from its smallest anonymous id
   (``stable_id``), so a rerun creates the same id.
3. A shell (a profile with anonymous ids only: a company or contact someone pointed at before
   it was pulled) matched by a record that resolves elsewhere is merged into that profile:
   that is how a shell is completed when its record arrives under a stronger identity. A
   converted lead's profile merges into its person's whatever claims it holds (``in_merges``).
4. A record's claim that identifies another profile with a strong claim is a conflict: the
   record still resolves by precedence (external id wins), the claim is not added, and the
   conflict is reported. Null and blank claims are ignored.
5. A profile gains the claims it lacked: anonymous ids are a set; email, domain and external id
   are set where the profile has none (one value per batch: the latest record's), and a merged
   profile's claims move with it where the profile has none.
6. A source changes its own claim: a record's new email (domain) replaces the profile's when
   no other source on the profile may hold the old one, i.e. every other source record on it
   (``copper-lead:``, ``copper-person:``, ``copper:``, ``planhat:`` anonymous ids; for a Copper
   record, Planhat's do not count: Planhat mirrors what we send it) is in this batch and none
   claims the old value. Otherwise the profile keeps it: a conflict. A value a CRM record
   gives up so (every other CRM source resolving to the profile) matches no other record of
   the batch and links none of the profile's records to others (``_released``, judged
   for all of them together): a colleague given a person's old address in the same batch
   resolves by its own identity, not into that person's profile; two people swapping addresses
   keep their profiles. Whatever the moves, no email (domain) or external id ends the batch
   on two profiles (``_one_profile_per_value``): a profile keeping it holds it, else the
   latest record's claim takes it; the other claims are conflicts.

Tables written, per kind: ``res_<kind>(record_key, hull_id, is_new)``,
``claims_<kind>`` (claims added), ``merges_<kind>``, ``conflicts_<kind>``.
"""

from __future__ import annotations

from hull_planhat_pipelines.sync.hull.batch import Batch
from hull_planhat_pipelines.sync.hull.model import DOMAIN_CLAIM, PRECEDENCE, Kind

MAX_ROUNDS = 200
"""Label propagation rounds before giving up (pointer jumping converges in a handful)."""


def resolve(batch: Batch, kind: Kind) -> None:
    """Resolve the staged records of one kind against ``s_<kind>`` (see the module rules)."""
    _records(batch, kind)
    _matches(batch, kind)
    _components(batch, kind)
    _resolution(batch, kind)
    _merges(batch, kind)
    _conflicts(batch, kind)
    _claims(batch, kind)
    batch.drop(*(f"{t}_{kind}" for t in ("sc", "rel", "m", "edge", "lab", "best", "win", "res0")))
    batch.drop(*(f"{t}_{kind}" for t in ("rc", "cand", "held", "fresh", "newkey")))


_BEST = (
    "{'hull_id': hull_id, 'strong': strong},"
    " {'prec': prec, 'shell': not strong,"
    " 'created': coalesce(created_at, 'infinity'::timestamptz), 'hull_id': hull_id}"
)
"""arg_min arguments: the best profile among matches (precedence, strong over shell, oldest)."""


def _records(batch: Batch, k: Kind) -> None:
    """One row per record key (a real record over its shells, then the latest), numbered; the
    claims of each (its key is its anonymous id)."""
    batch.sql(
        f"create or replace temp table r_{k} as"
        " select (row_number() over ())::bigint - 1 as rid, record_key, unnest(r) from ("
        " select record_key, arg_max({'source_object': source_object, 'source_id': source_id,"
        " 'modified_at': modified_at, 'is_shell': is_shell},"
        " {'real': not is_shell, 'at': coalesce(modified_at, '-infinity'::timestamptz),"
        " 'id': coalesce(source_id, '')}) as r"
        f" from in_records where kind = '{k}' group by record_key);"
        f"create or replace temp table rc_{k} as"
        f" select distinct r.rid, c.claim, c.value from in_claims c join r_{k} r using (record_key)"
        f" where c.kind = '{k}' and nullif(c.value, '') is not null and c.claim <> 'anonymous_id'"
        f" union select r.rid, 'anonymous_id', c.value from in_claims c join r_{k} r"
        f" using (record_key) where c.kind = '{k}' and nullif(c.value, '') is not null"
        " and c.claim = 'anonymous_id' and c.value <> c.record_key"
        f" union all select rid, 'anonymous_id', record_key from r_{k}"
    )


def _precedence_sql() -> str:
    cases = " ".join(f"when '{claim}' then {rank}" for claim, rank in PRECEDENCE.items())
    return f"case claim {cases} end"


def _matches(batch: Batch, k: Kind) -> None:
    """Every (record, claim) -> existing profile holding that claim."""
    other = DOMAIN_CLAIM[k]
    batch.sql(
        f"create or replace temp table sc_{k} as"
        f" select hull_id, 'external_id' as claim, external_id as value from s_{k}"
        f" where external_id in (select value from rc_{k} where claim = 'external_id')"
        f" union all select hull_id, '{other}', {other} from s_{k}"
        f" where {other} in (select value from rc_{k} where claim = '{other}')"
        " union all select hull_id, 'anonymous_id', value from ("
        f" select hull_id, unnest(anonymous_ids) as value from s_{k})"
        f" where value in (select value from rc_{k} where claim = 'anonymous_id');"
    )
    _released(batch, k)
    batch.sql(
        f"create or replace temp table m_{k} as"
        f" select rc.rid, rc.claim, rc.value, sc.hull_id, s.strong, s.created_at,"
        # a record's own key before the other anonymous ids it claims (a converted lead's)
        f" {_precedence_sql()} + case when rc.claim = 'anonymous_id'"
        " and rc.value <> r.record_key then 1 else 0 end as prec"
        f" from rc_{k} rc join sc_{k} sc using (claim, value) join s_{k} s using (hull_id)"
        f" join r_{k} r using (rid)"
    )


def _released(batch: Batch, k: Kind) -> None:
    """Stored emails (domains) their own profile gives up in this batch match no record of it.

    A profile's value is given up when a CRM record of one of its sources claims another one
    and every other CRM source on the profile is in the batch without claiming it (rule 6,
    decided before resolution: the batch's own records say so). Each of those records must
    resolve to the profile (none of its strong claims is another profile's), as rule 6 counts
    only the records that did: a source leaving for another profile vouches for nothing. A
    record taking that value in the same batch (a colleague given a person's old address)
    resolves by its own identity instead of being folded into the profile that let the value
    go. A record whose new value another profile gives up in the batch resolves to its own
    profile only once that value is released, and may then give up its own: a chain of moves
    in one sync, or a cycle (two people swapping addresses). So every value of the batch's
    profiles is first supposed given up, and a value stays so only while its profile's records
    still resolve to it with the values still supposed given up belonging to no one; rounds
    repeat until none is dropped (the largest consistent set: a swap releases both addresses,
    a swap one side of which is held releases neither).

    Planhat records give nothing up: Planhat mirrors the emails we send it, so two endusers
    trading emails there land by email on each other's profiles (rule 6 alone). The pairs
    released stay in ``rel_<kind>``: the profile's own records sharing the value with others
    are not grouped with them by it (``_components``)."""
    other = DOMAIN_CLAIM[k]
    # a record resolving to a profile: none of its strong claims is another profile's (a
    # value still supposed given up, ``relc_<kind>``, is no one's)
    resolves_to = (
        "not exists (select 1 from rc_{k} o join sc_{k} h using (claim, value)"
        " where o.rid = {rid} and o.claim in ('external_id', '{other}')"
        " and h.hull_id <> {hull} and not (h.claim = '{other}' and exists (select 1"
        " from relc_{k} x where x.hull_id = h.hull_id and x.held = h.value)))"
    )
    batch.sql(
        f"create or replace temp table src_{k} as select * from (select s.hull_id,"
        f" s.{other} as held, unnest(s.anonymous_ids) as key from s_{k} s"
        f" where s.{other} is not null"
        f" and s.hull_id in (select hull_id from sc_{k} where claim = 'anonymous_id'))"
        f" where regexp_matches(key, '{_SOURCE_KEY}') and not starts_with(key, 'planhat:');"
        f"create or replace temp table real_{k} as select r.rid, r.record_key, r.modified_at"
        f" from r_{k} r where not r.is_shell"
        f" and r.record_key in (select key from src_{k});"
        # to start, every value of the batch's profiles is supposed given up
        f"create or replace temp table relc_{k} as select distinct hull_id, held from src_{k}"
    )
    held = batch.scalar(f"select count(*) from relc_{k}")
    for _ in range(MAX_ROUNDS):
        released = batch.scalar(
            f"create or replace temp table rel1_{k} as"
            # the latest of a profile's CRM records claiming another value, resolving to it
            " with changer as (select s.hull_id, s.held, arg_max(r.record_key,"
            " coalesce(r.modified_at, '-infinity'::timestamptz)) as record_key"
            f" from src_{k} s semi join relc_{k} x using (hull_id, held)"
            f" join real_{k} r on r.record_key = s.key"
            f" join rc_{k} c on c.rid = r.rid and c.claim = '{other}' and c.value <> s.held"
            f" where {resolves_to.format(k=k, other=other, rid='r.rid', hull='s.hull_id')}"
            " group by s.hull_id, s.held)"
            # every other CRM source in the batch, resolving to the profile, none claiming it
            f" select ch.hull_id, ch.held from changer ch where not exists (select 1"
            f" from src_{k} p where p.hull_id = ch.hull_id and p.key <> ch.record_key"
            f" and (p.key not in (select record_key from real_{k}) or exists (select 1"
            f" from real_{k} r where r.record_key = p.key and (not"
            f" {resolves_to.format(k=k, other=other, rid='r.rid', hull='ch.hull_id')}"
            f" or exists (select 1 from rc_{k} c where c.rid = r.rid"
            f" and c.claim = '{other}' and c.value = ch.held)))));"
            f"drop table relc_{k}; alter table rel1_{k} rename to relc_{k};"
            f"select count(*) from relc_{k}"
        )
        if released in (0, held):  # nothing left, or every value still supposed given up holds
            break
        held = released
    else:  # a chain too long to judge in time: nothing given up, as before releases existed
        batch.sql(f"delete from relc_{k}")
    batch.sql(
        f"delete from sc_{k} using relc_{k} r where sc_{k}.claim = '{other}'"
        f" and sc_{k}.hull_id = r.hull_id and sc_{k}.value = r.held;"
        f"create or replace temp table rel_{k} as select hull_id, held from relc_{k}"
    )
    batch.drop(f"relc_{k}", f"src_{k}", f"real_{k}")


def _components(batch: Batch, k: Kind) -> None:
    """Connected components of records sharing a claim (or a matched shell), by min-label
    propagation with pointer jumping. Only records sharing a key take part: a record alone is
    its own component. A profile's records do not share the value it gave up (``rel_<kind>``)
    with others: its Planhat enduser, still showing a person's old address, does not pull the
    colleague taking it into the person's profile."""
    other = DOMAIN_CLAIM[k]
    batch.sql(
        f"create or replace temp table edge_{k} as"
        " with mem as ("
        # a value a profile gave up links none of its own records to the records taking it
        f" select rid, claim, value from rc_{k} anti join (select m.rid, '{other}' as claim,"
        f" r.held as value from m_{k} m join rel_{k} r using (hull_id)"
        " where m.claim = 'anonymous_id') using (rid, claim, value)"
        f" union all select distinct rid, 'profile', hull_id from m_{k} where not strong),"
        " shared as (select claim, value from mem group by claim, value having count(*) > 1)"
        " select rid, dense_rank() over (order by claim, value) as key"
        " from mem semi join shared using (claim, value);"
        f"create or replace temp table lab_{k} as select distinct rid, rid as l from edge_{k}"
    )
    for _ in range(MAX_ROUNDS):
        batch.sql(
            f"create or replace temp table lab2_{k} as"
            f" with kl as (select e.key, min(lab.l) as l from edge_{k} e join lab_{k} lab"
            " using (rid) group by e.key),"
            f" nl as (select e.rid, min(kl.l) as l from edge_{k} e join kl using (key)"
            " group by e.rid)"
            " select nl.rid, least(nl.l, coalesce(p.l, nl.l)) as l"
            " from nl left join nl p on p.rid = nl.l"
        )
        changed = batch.scalar(
            f"select count(*) from lab2_{k} n join lab_{k} o using (rid) where n.l <> o.l"
        )
        batch.sql(f"drop table lab_{k}; alter table lab2_{k} rename to lab_{k}")
        if not changed:
            return
    raise RuntimeError(f"{k} identity groups did not converge in {MAX_ROUNDS} rounds")


def _resolution(batch: Batch, k: Kind) -> None:
    """Per record: its own strong best match, else its group's best match, else a new id from
    the group's smallest record key."""
    batch.sql(
        f"create or replace temp table best_{k} as select rid, unnest(arg_min({_BEST}))"
        f" from m_{k} group by rid;"
        f"create or replace temp table win_{k} as select lab.l as comp, unnest(arg_min({_BEST}))"
        f" from m_{k} join lab_{k} lab using (rid) group by lab.l;"
        f"create or replace temp table newkey_{k} as select lab.l as comp,"
        f" min(r.record_key) as key from lab_{k} lab join r_{k} r using (rid) group by lab.l;"
        f"create or replace temp table res0_{k} as select r.rid, r.record_key,"
        " case when b.strong then b.hull_id when w.hull_id is not null then w.hull_id"
        " when b.hull_id is not null then b.hull_id"
        f" else hull_stable_id('{k}', coalesce(n.key, r.record_key)) end as hull_id,"
        " coalesce(b.strong or w.strong, b.strong, false) as strong,"
        " b.hull_id is null and w.hull_id is null as is_new"
        f" from r_{k} r left join lab_{k} lab using (rid) left join best_{k} b using (rid)"
        f" left join win_{k} w on w.comp = lab.l left join newkey_{k} n on n.comp = lab.l"
    )


def _merges(batch: Batch, k: Kind) -> None:
    """Shells matched by records that resolved elsewhere are merged into that profile."""
    batch.sql(
        f"create or replace temp table merges_{k} as"
        " select m.hull_id as from_hull_id, r.hull_id as into_hull_id"
        f" from m_{k} m join res0_{k} r using (rid)"
        " where not m.strong and m.hull_id <> r.hull_id"
        " qualify row_number() over (partition by m.hull_id"
        " order by r.strong desc, r.hull_id) = 1;"
        # conversions: the profile of a converted lead merges into its person's, whatever
        # claims either holds (``in_merges``; the person's profile from the batch or the store)
        f"create or replace temp table keyed_{k} as select record_key as key, hull_id"
        f" from res0_{k} union all select value, hull_id from (select hull_id,"
        f" unnest(anonymous_ids) as value from s_{k}) where value in (select from_key from"
        f" in_merges where kind = '{k}' union select into_key from in_merges where kind = '{k}')"
        f" and value not in (select record_key from res0_{k});"
        f"insert into merges_{k} select f.hull_id, arg_min(i.hull_id, i.hull_id)"
        f" from in_merges c join keyed_{k} f on f.key = c.from_key"
        f" join keyed_{k} i on i.key = c.into_key"
        f" where c.kind = '{k}' and f.hull_id <> i.hull_id"
        f" and f.hull_id not in (select from_hull_id from merges_{k})"
        # never merge away another record of the target's object (a lead sharing its email
        # with a different person): the claim stays a conflict instead
        f" and not exists (select 1 from keyed_{k} o where o.hull_id = f.hull_id"
        " and o.key <> c.into_key and split_part(o.key, ':', 1) = split_part(c.into_key, ':', 1))"
        f" and not exists (select 1 from (select hull_id, unnest(anonymous_ids) as key"
        f" from s_{k} where hull_id in (select k2.hull_id from keyed_{k} k2"
        f" join in_merges m2 on m2.from_key = k2.key where m2.kind = '{k}')) o"
        " where o.hull_id = f.hull_id and o.key <> c.into_key"
        " and split_part(o.key, ':', 1) = split_part(c.into_key, ':', 1))"
        " group by f.hull_id;"
        # a merge into a profile that is itself merged follows the chain
        f"update merges_{k} set into_hull_id = n.into_hull_id from merges_{k} n"
        f" where merges_{k}.into_hull_id = n.from_hull_id;"
        f"update merges_{k} set into_hull_id = n.into_hull_id from merges_{k} n"
        f" where merges_{k}.into_hull_id = n.from_hull_id;"
        f"delete from merges_{k} where from_hull_id = into_hull_id;"
        f"create or replace temp table res_{k} as"
        " select r.rid, r.record_key, coalesce(g.into_hull_id, r.hull_id) as hull_id,"
        " case when g.into_hull_id is null then r.is_new"
        f" else g.into_hull_id not in (select hull_id from s_{k}) end as is_new"
        f" from res0_{k} r left join merges_{k} g on g.from_hull_id = r.hull_id;"
        f"drop table keyed_{k}"
    )


def _conflicts(batch: Batch, k: Kind) -> None:
    """Claims pointing at another (not merged) profile than the one the record resolved to."""
    batch.sql(
        f"create or replace temp table conflicts_{k} as"
        f" select '{k}' as kind, r.record_key as record, m.claim, m.value,"
        " r.hull_id as resolved_hull_id, m.hull_id as other_hull_id,"
        " 'Claim identifies another profile' as reason"
        f" from m_{k} m join res_{k} r using (rid)"
        f" left join merges_{k} g on g.from_hull_id = m.hull_id"
        " where m.hull_id <> r.hull_id and g.into_hull_id is distinct from r.hull_id"
    )


_LATEST = (
    "{'at': coalesce(modified_at, '-infinity'::timestamptz), 'key': record_key, 'value': value}"
)
"""SQL over candidate claims: the order in which "the latest record's value" is the greatest
(its record's time, then its key, then the value itself)."""
_LATEST_CLAIM = (
    "unnest(arg_max({'value': value, 'is_new_profile': is_new, 'source_object': source_object,"
    f" 'source_id': source_id}}, {_LATEST}))"
)
"""SQL aggregate over a profile's candidates of one claim: the latest record's, as the
``value, is_new_profile, source_object, source_id`` columns of ``claims_<kind>``."""


def _claims(batch: Batch, k: Kind) -> None:
    """Claims each resolved profile gains; single-valued ones only where it has none."""
    other = DOMAIN_CLAIM[k]
    batch.sql(
        # candidate claims: the records' own (not conflicting) plus merged shells' anonymous ids
        f"create or replace temp table cand_{k} as"
        " select res.hull_id, rc.claim, rc.value, res.is_new, r.source_object, r.source_id,"
        " r.modified_at, r.record_key"
        f" from rc_{k} rc join res_{k} res using (rid) join r_{k} r using (rid)"
        f" anti join conflicts_{k} c on c.record = r.record_key and c.claim = rc.claim"
        " and c.value = rc.value"
        " union all select g.into_hull_id, 'anonymous_id', unnest(s.anonymous_ids), false,"
        " 'merge', g.from_hull_id, null, null"
        f" from merges_{k} g join s_{k} s on s.hull_id = g.from_hull_id"
        " union all select * from (select g.into_hull_id, unnest(['external_id', "
        f"'{other}']) as claim, unnest([s.external_id, s.{other}]) as value, false, 'merge',"
        " g.from_hull_id, null::timestamptz, null"
        f" from merges_{k} g join s_{k} s on s.hull_id = g.from_hull_id) where value is not null;"
        # what the touched profiles hold already
        f"create or replace temp table held_{k} as"
        f" with touched as (select distinct hull_id from cand_{k} where not is_new),"
        f" s as (select * from s_{k} semi join touched using (hull_id))"
        " select hull_id, 'anonymous_id' as claim, unnest(anonymous_ids) as value from s"
        " union all select hull_id, 'external_id', external_id from s"
        " where external_id is not null"
        f" union all select hull_id, '{other}', {other} from s where {other} is not null;"
        # candidates the profile does not hold yet
        f"create or replace temp table fresh_{k} as"
        f" select * from cand_{k} anti join held_{k} using (hull_id, claim, value);"
        # anonymous ids are a set; a single-valued claim takes the latest record's value
        f"create or replace temp table claims_{k} as"
        " select hull_id, 'anonymous_id' as claim, value, bool_or(is_new) as is_new_profile,"
        " arg_min(source_object, coalesce(record_key, '')) as source_object,"
        " arg_min(source_id, coalesce(record_key, '')) as source_id"
        f" from fresh_{k} where claim = 'anonymous_id' group by hull_id, value"
        f" union all select hull_id, claim, {_LATEST_CLAIM} from fresh_{k}"
        f" anti join (select distinct hull_id, claim from held_{k}"
        " where claim <> 'anonymous_id') h using (hull_id, claim)"
        " where claim <> 'anonymous_id' group by hull_id, claim"
    )
    _replacements(batch, k)
    _one_profile_per_value(batch, k)
    # a second value for a single-valued claim, or a value the profile holds differently
    batch.sql(
        f"insert into conflicts_{k} select '{k}', c.record_key, c.claim, c.value, c.hull_id,"
        " null, 'Profile keeps another ' || c.claim"
        f" from fresh_{k} c anti join claims_{k} a using (hull_id, claim, value)"
        f" anti join conflicts_{k} x on x.record = c.record_key and x.claim = c.claim"
        " and x.value = c.value"
        " where c.claim <> 'anonymous_id' and c.source_object <> 'merge'"
    )


TAKEN = "Another profile holds the "
"""Conflict reason (with the claim's name) of a value ``_one_profile_per_value`` withheld."""


def _one_profile_per_value(batch: Batch, k: Kind) -> None:
    """No email (domain) or external id ends the batch on two profiles.

    Claims are judged profile by profile, so two profiles could each be given one value: two
    people moving to one new address, a value a profile was supposed to give up but keeps
    (another of its sources blocked the replacement), or one a cycle of moves hands on. Where
    a value would end on two profiles, a profile that keeps it holds it, else the latest
    record's claim takes it; the other claims are withheld (a conflict). A profile without a
    value of the kind then takes the latest other value its records claim, if any; a
    withheld replacement leaves its profile with the value it held. Either may collide in
    turn, so rounds repeat; past ``MAX_ROUNDS`` no replacement is made at all (then nothing can
    cascade) and one last round settles the new values."""
    other = DOMAIN_CLAIM[k]
    kinds = f"('external_id', '{other}')"
    batch.sql(
        # when each claimed value was claimed (the latest of its records)
        f"create or replace temp table claim_at_{k} as select hull_id, claim, value,"
        f" max({_LATEST}) as latest from fresh_{k} where claim in {kinds}"
        " group by hull_id, claim, value;"
        # the values the batch's stored profiles hold, those merged away aside
        f"create or replace temp table kept_{k} as select * from (select hull_id,"
        f" unnest(['external_id', '{other}']) as claim,"
        f" unnest([external_id, {other}]) as value from s_{k}"
        f" where hull_id not in (select from_hull_id from merges_{k}))"
        " where value is not null;"
        f"create or replace temp table withheld_all_{k}"
        " (hull_id varchar, claim varchar, value varchar)"
    )
    withheld = (
        f"create or replace temp table withheld_{k} as"
        " with ending as ("
        # a profile ends with its claim of a kind, else with what it holds
        f" select hull_id, claim, value, false as kept from claims_{k} where claim in {kinds}"
        f" union all select hull_id, claim, value, true from kept_{k}"
        f" anti join (select hull_id, claim from claims_{k}) c using (hull_id, claim)),"
        " shared as (select claim, value, bool_or(kept) as kept from ending"
        " group by claim, value having count(distinct hull_id) > 1),"
        " winner as (select e.claim, e.value, arg_max(e.hull_id, a.latest)"
        " as hull_id from ending e join shared s using (claim, value)"
        f" join claim_at_{k} a using (hull_id, claim, value) where not s.kept"
        " group by e.claim, e.value)"
        " select e.hull_id, e.claim, e.value from ending e join shared s using (claim, value)"
        " left join winner w using (claim, value)"
        " where not e.kept and (s.kept or e.hull_id <> w.hull_id);"
        f"insert into withheld_all_{k} select * from withheld_{k};"
        f"delete from claims_{k} using withheld_{k} w where claims_{k}.hull_id = w.hull_id"
        f" and claims_{k}.claim = w.claim and claims_{k}.value = w.value;"
        f"insert into conflicts_{k} select '{k}', c.record_key, c.claim, c.value, c.hull_id,"
        f" null, '{TAKEN}' || c.claim from fresh_{k} c semi join withheld_{k}"
        " using (hull_id, claim, value) where c.source_object <> 'merge';"
        f"select count(*) from withheld_{k}"
    )
    # a profile holding no value of a kind whose claim was withheld takes the latest value
    # of the kind its records claim that was not withheld from it
    refill = (
        f"insert into claims_{k} select hull_id, claim, {_LATEST_CLAIM} from fresh_{k}"
        f" semi join (select hull_id, claim from withheld_all_{k}) l using (hull_id, claim)"
        f" anti join withheld_all_{k} w using (hull_id, claim, value)"
        f" anti join (select hull_id, claim from claims_{k}) c using (hull_id, claim)"
        f" anti join (select hull_id, claim from kept_{k}) h using (hull_id, claim)"
        f" where claim in {kinds} group by hull_id, claim"
    )
    for _ in range(MAX_ROUNDS):
        if not batch.scalar(withheld):
            break
        batch.sql(refill)
    else:  # no replacement: a withheld claim then leaves its profile without a value
        batch.sql(
            f"delete from claims_{k} using kept_{k} h where claims_{k}.hull_id = h.hull_id"
            f" and claims_{k}.claim = h.claim"
        )
        batch.scalar(withheld)
    batch.drop(f"claim_at_{k}", f"kept_{k}", f"withheld_{k}", f"withheld_all_{k}")


_SOURCE_KEY = "^(copper-lead|copper-person|copper|planhat):"


def _replacements(batch: Batch, k: Kind) -> None:
    """A record's new email (domain) replaces the profile's own when no other source on the
    profile may hold the old one (rule 6): added to ``claims_<kind>``."""
    other = DOMAIN_CLAIM[k]
    batch.sql(
        # the latest record's value per profile, where the profile holds another one
        f"create or replace temp table rep_{k} as select hull_id, claim,"
        " unnest(arg_max({'value': value, 'source_object': source_object,"
        f" 'source_id': source_id, 'record_key': record_key}}, {_LATEST})) from fresh_{k}"
        f" semi join (select hull_id, claim from held_{k} where claim = '{other}')"
        " using (hull_id, claim)"
        f" where claim = '{other}' and source_object <> 'merge' group by hull_id, claim;"
        # sources on those profiles besides the record itself, and whether they vouch
        f"create or replace temp table vouch_{k} as select p.hull_id, p.key,"
        f" p.key in (select r.record_key from r_{k} r join res_{k} x using (rid)"
        " where not r.is_shell and x.hull_id = p.hull_id) as in_batch,"
        f" exists (select 1 from r_{k} r join rc_{k} c using (rid)"
        f" join held_{k} h on h.hull_id = p.hull_id and h.claim = '{other}'"
        f" where r.record_key = p.key and c.claim = '{other}' and c.value = h.value) as holds"
        f" from (select s.hull_id, unnest(s.anonymous_ids) as key from s_{k} s"
        f" semi join rep_{k} using (hull_id)) p"
        f" join rep_{k} r on r.hull_id = p.hull_id"
        f" where regexp_matches(p.key, '{_SOURCE_KEY}') and p.key <> r.record_key"
        # Planhat mirrors what we send it: it does not hold a CRM record's email against it
        " and not (starts_with(p.key, 'planhat:') and not starts_with(r.record_key, 'planhat:'));"
        f"insert into claims_{k} select r.hull_id, r.claim, r.value, false, r.source_object,"
        f" r.source_id from rep_{k} r anti join (select hull_id from vouch_{k}"
        " where not in_batch or holds) v using (hull_id);"
        f"drop table rep_{k}; drop table vouch_{k}"
    )
