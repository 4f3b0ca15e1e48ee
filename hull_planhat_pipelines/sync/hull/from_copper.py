"""Copper current rows -> staged records, claims, attributes, links and events.

Reads the typed columns and the ``fields`` JSON (the normalized record) of ``copper_current``
rows, following the configuration: identity fields feed claims, attribute maps feed groups
``copper_lead/``, ``copper_person/``, ``copper/`` and ``copper_opportunity_<type>/``. Whole
tables at a time in DuckDB; each record's JSON is parsed once.

Where this improves on the seed connector:
- a converted lead (``leads_converted_from``) joins its person's user through the claim
  ``copper-lead:<id>`` (the seed built a wrong id and then dropped it);
- a person without a company gets no link (the seed linked to ``coppercrm:null``);
- every opportunity group carries ``<group>/id``, so that a full refresh can clear the groups
  of opportunities deleted from Copper (the seed kept them forever);
- activities become events keyed by activity id, so an edited activity updates its event.

Decisions: an activity or opportunity pointing at a lead, person or company not pulled yet
creates a shell profile (anonymous id only) that the record completes when it arrives, so no
event is lost. Skipped activities are summarized per reason (count and sample ids), not logged
one by one: system activities are most of a Copper account's activity stream.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

import pandas as pd

from hull_planhat_pipelines.settings import AttributeMap, CopperSettings, UserIdentity
from hull_planhat_pipelines.sync.copper.schema import copper_object
from hull_planhat_pipelines.sync.hull.batch import Batch, quote
from hull_planhat_pipelines.sync.hull.model import (
    COPPER_COMPANY_GROUP,
    COPPER_LEAD_GROUP,
    COPPER_OPPORTUNITY_GROUP_PREFIX,
    COPPER_PERSON_GROUP,
    KINDS,
)
from hull_planhat_pipelines.sync.hull.sql import (
    INVALID_EMAIL,
    JsonFields,
    attribute_structs,
    canonical_value,
    matching_text,
    text_of,
    unique_names,
    valid_email,
)
from hull_planhat_pipelines.sync.log import SyncEvent

_VALUE = canonical_value("struct_extract(a, 'value')")


@dataclass(frozen=True)
class CopperRows:
    """``copper_current`` tables (newest row per id); None: the object is not in this batch.

    Pass every current opportunity, not only changed ones: two opportunities of one type on a
    profile are settled by date_modified among those given. ``opportunities_complete`` says the
    opportunities are all of Copper's (a full refresh): groups of opportunities no longer among
    them are cleared from the profiles.
    """

    leads: pd.DataFrame | None = None
    people: pd.DataFrame | None = None
    companies: pd.DataFrame | None = None
    opportunities: pd.DataFrame | None = None
    activities: pd.DataFrame | None = None
    opportunities_complete: bool = False
    current_ids: Mapping[str, pd.Series] | None = None
    """Every id of each ``copper_current`` table that exists (``leads``, ``people``,
    ``companies``, ``activities``): records on profiles but not here were deleted."""


MAPPED_COLUMNS = {
    "leads": ("id", "date_modified", "fields"),
    "people": ("id", "date_modified", "company_id", "fields"),
    "companies": ("id", "date_modified", "fields"),
    "opportunities": (
        "id",
        "date_modified",
        "company_id",
        "primary_contact_id",
        "opportunity_type",
        "fields",
    ),
    "activities": (
        "id",
        "parent_type",
        "parent_id",
        "type_id",
        "type_category",
        "type_name",
        "activity_date",
        "fields",
    ),
}
"""The columns of each Copper table the mapping reads: all a sync needs to read of them (a
record's raw JSON, the largest column, is not one)."""
_TYPES = {
    "id": "bigint",
    "date_modified": "timestamptz",
    "activity_date": "timestamptz",
    "company_id": "bigint",
    "primary_contact_id": "bigint",
    "parent_id": "bigint",
    "type_id": "bigint",
}


def map_copper(
    batch: Batch, frames: MutableMapping[str, pd.DataFrame | None], settings: CopperSettings
) -> list[SyncEvent]:
    """Stage the given Copper tables (``frames``: table name -> its ``CopperRows`` frame, None
    or absent: not in this batch); returns the skips (never raises for one bad record).

    Each frame leaves ``frames`` as it is copied into the batch: a caller holding no other
    reference lets it go then, instead of keeping every raw frame (a first load's are over a
    gigabyte at 100,000 people) while the rest are staged."""
    events: list[SyncEvent] = []
    loaded = {name: _load(batch, name, frames.pop(name, None), events) for name in MAPPED_COLUMNS}
    if loaded["leads"]:
        events += _stage_users(batch, "leads", "lead", "copper-lead:", COPPER_LEAD_GROUP, settings)
        _stage_lead_conversions(batch)
        _staged(batch, "leads")
    if loaded["people"]:
        events += _stage_users(
            batch, "people", "person", "copper-person:", COPPER_PERSON_GROUP, settings
        )
        _stage_converted_leads(batch)
        if settings.link_person_to_account:
            _stage_person_links(batch)
        _staged(batch, "people")
    if loaded["companies"]:
        events += _stage_companies(batch, settings)
        _staged(batch, "companies")
    if loaded["opportunities"]:
        events += _stage_opportunities(batch, settings.attributes.opportunity)
        _staged(batch, "opportunities", "_opp")
    if loaded["activities"]:
        events += _stage_activities(batch, settings.activity_types)
        _staged(batch, "activities", "_act")
    return events


def _staged(batch: Batch, name: str, *scratch: str) -> None:
    """An object's raw rows (and its scratch tables) leave the batch once it is staged: each
    object reads only its own, and a first load's raw JSON kept until the last was staged made
    the sync's peak (the activities were staged beside every other object's rows)."""
    batch.drop(f"cu_{name}", "_src", *scratch)


_LOG_KIND = {
    "leads": "user",
    "people": "user",
    "companies": "account",
    "opportunities": "account",
    "activities": "event",
}


def _load(batch: Batch, name: str, frame: pd.DataFrame | None, events: list[SyncEvent]) -> bool:
    """``cu_<name>`` with the columns mapping reads; rows whose ``fields`` is not JSON are
    left out and reported (one summary per object), never fatal."""
    if frame is None:
        return False
    select = ", ".join(f"{c}::{_TYPES.get(c, 'varchar')} as {c}" for c in MAPPED_COLUMNS[name])
    batch.load(f"cu_{name}", frame, select)
    bad = batch.frame(
        f"select id from cu_{name} where fields is null or not json_valid(fields) order by id"
    )
    if not bad.empty:
        batch.sql(f"delete from cu_{name} where fields is null or not json_valid(fields)")
        events += [
            SyncEvent(
                event=f"incoming.{_LOG_KIND[name]}.error",
                object_type=copper_object(name).record_type,
                object_id=str(record_id),
                reason="Invalid fields JSON",
            )
            for record_id in bad["id"].tolist()
        ]
    return True


# -- users and accounts ------------------------------------------------------------------------
def _stage_record(
    batch: Batch,
    kind: str,
    source_object: str,
    table: str,
    key_sql: str,
    claims: dict[str, str | None],
    group: str,
    attributes: AttributeMap,
) -> list[SyncEvent]:
    """Records, claims and attributes of one Copper object (whole table at once). Emails and
    domains are trimmed and lower-cased; a record whose email is not an address is skipped
    (returned as ``incoming.user.skip``): it is never stored, matched or sent anywhere."""
    fields = JsonFields()
    claim_exprs = {c: fields.copper_field(f) for c, f in claims.items() if f}
    value_pairs = [
        (quote(f"{group}/{name}"), fields.copper_field(field))
        for field, name in unique_names(attributes).items()
    ]
    batch.sql(
        f"create or replace temp table _src as select {key_sql} as record_key,"
        f" id::varchar as source_id, date_modified as modified_at, {fields.extraction('fields')}"
        f" from {table}"
    )
    skips = []
    if "email" in claim_exprs:
        email = matching_text(text_of(claim_exprs["email"]))
        # one statement: a select and a delete each tested every address (about 7 ms apiece
        # over the 4,000 people of a 10,000-record sync)
        invalid = batch.frame(
            f"delete from _src where {email} is not null and not {valid_email(email)}"
            " returning source_id"
        )
        skips = [
            SyncEvent.model_construct(
                event="incoming.user.skip",
                object_type=source_object,
                object_id=source_id,
                reason=INVALID_EMAIL,
                details={},
            )
            for source_id in sorted(invalid["source_id"].tolist(), key=int)
        ]
    batch.sql(
        f"insert into in_records select '{kind}', record_key, '{source_object}', source_id,"
        " modified_at, false from _src"
    )
    for claim, expr in claim_exprs.items():
        value = text_of(expr) if claim == "external_id" else matching_text(text_of(expr))
        batch.sql(
            f"insert into in_claims select '{kind}', record_key, '{claim}', {value}"
            f" from _src where {value} is not null"
        )
    _insert_attributes(batch, kind, group, source_object, value_pairs)
    return skips


def _insert_attributes(
    batch: Batch,
    kind: str,
    group: str,
    source_object: str,
    value_pairs: list[tuple[str, str]],
) -> None:
    """Unnest (attribute, JSON value) pairs of ``_src`` rows into ``in_attributes``, and note
    in ``in_writes`` that each of those records writes ``group``."""
    batch.sql(
        f"insert into in_writes select '{kind}', record_key, {quote(group)}, '{source_object}',"
        " source_id, modified_at from _src"
    )
    if not value_pairs:
        return
    batch.sql(
        f"insert into in_attributes select '{kind}', record_key, {quote(group)},"
        f" struct_extract(a, 'attribute'), {_VALUE},"
        f" '{source_object}', source_id, modified_at"
        f" from (select record_key, source_id, modified_at,"
        f" unnest({attribute_structs(value_pairs)}) as a from _src)"
        " where struct_extract(a, 'value') is not null"
    )


def _stage_users(
    batch: Batch, table: str, obj: str, prefix: str, group: str, settings: CopperSettings
) -> list[SyncEvent]:
    identity: UserIdentity = getattr(settings.identity, obj)
    return _stage_record(
        batch,
        "user",
        obj,
        f"cu_{table}",
        f"'{prefix}' || id",
        {"email": identity.email, "external_id": identity.external_id},
        group,
        getattr(settings.attributes, obj),
    )


def _stage_converted_leads(batch: Batch) -> None:
    """A person converted from a lead also claims the lead's anonymous id, and the lead's
    profile merges into the person's (one user for both, even when each had its own email)."""
    batch.sql(
        "create or replace temp table _conv as select record_key, lead_id from ("
        " select 'copper-person:' || id as record_key,"
        " unnest(json_extract(fields, '$.leads_converted_from[*].lead_id')) ->> '$' as lead_id"
        " from cu_people) where lead_id is not null and lead_id <> 'null';"
        "insert into in_claims select 'user', record_key, 'anonymous_id', 'copper-lead:' || lead_id"
        " from _conv;"
        "insert into in_merges select 'user', 'copper-lead:' || lead_id, record_key from _conv;"
        "drop table _conv"
    )


def _stage_lead_conversions(batch: Batch) -> None:
    """A converted lead names its person (``converted_contact_id``): its profile merges into
    that person's, whether or not the person lists the lead. Its email no longer claims
    anything: the person's is the user's (whichever record was saved last)."""
    batch.sql(
        "create or replace temp table _conv as select 'copper-lead:' || id as record_key,"
        " 'copper-person:' || c as person_key"
        " from (select id, json_extract_string(fields, '$.converted_contact_id') as c"
        " from cu_leads) where c is not null and regexp_full_match(c, '[0-9]+');"
        "insert into in_merges select 'user', record_key, person_key from _conv;"
        "delete from in_claims where kind = 'user' and claim = 'email'"
        " and record_key in (select record_key from _conv);"
        "drop table _conv"
    )


def _stage_person_links(batch: Batch) -> None:
    """person -> account ``copper:<company_id>`` (a shell until the company is pulled); a
    person without a company stages a link to no account (it leaves its Copper account)."""
    batch.sql(
        "insert into in_links select 'copper-person:' || id,"
        " case when company_id is not null then 'copper:' || company_id end, 'person',"
        " id::varchar, date_modified from cu_people;"
        "insert into in_records select 'account', 'copper:' || company_id, 'person',"
        " id::varchar, date_modified, true from cu_people where company_id is not null"
    )


def _stage_companies(batch: Batch, settings: CopperSettings) -> list[SyncEvent]:
    identity = settings.identity.company
    return _stage_record(
        batch,
        "account",
        "company",
        "cu_companies",
        "'copper:' || id",
        {"domain": identity.domain, "external_id": identity.external_id},
        COPPER_COMPANY_GROUP,
        settings.attributes.company,
    )


# -- opportunities -------------------------------------------------------------------------------
_OPPORTUNITY_TARGETS = (
    ("account", "company_id", "copper:"),
    ("user", "primary_contact_id", "copper-person:"),
)


def _stage_opportunities(batch: Batch, attributes: AttributeMap) -> list[SyncEvent]:
    """Attributes under ``copper_opportunity_<type>/`` on the company's account and the primary
    contact's user; ``<group>/id`` names the opportunity that wrote the group."""
    fields = JsonFields()
    pairs = [
        ("'/' || " + quote(name), fields.copper_field(f))
        for f, name in unique_names(attributes, reserved=("id",)).items()
    ]
    pairs.append(("'/id'", "to_json(source_id::bigint)"))
    batch.sql(
        "create or replace temp table _opp as select id, company_id, primary_contact_id,"
        f" date_modified, '{COPPER_OPPORTUNITY_GROUP_PREFIX}' || opportunity_type as grp,"
        f" {fields.extraction('fields')} from cu_opportunities"
        " where nullif(trim(opportunity_type), '') is not null"
    )
    grouped = [(f"grp || {suffix}", value) for suffix, value in pairs]
    for kind, column, prefix in _OPPORTUNITY_TARGETS:
        batch.sql(
            f"create or replace temp table _src as select '{prefix}' || {column} as record_key,"
            f" id::varchar as source_id, date_modified as modified_at, grp, v from _opp"
            f" where {column} is not null;"
            f"insert into in_records select '{kind}', record_key, 'opportunity', source_id,"
            " modified_at, true from _src;"
            f"insert into in_writes select '{kind}', record_key, grp, 'opportunity', source_id,"
            " modified_at from _src"
        )
        batch.sql(
            f"insert into in_attributes select '{kind}', record_key, grp,"
            f" struct_extract(a, 'attribute'), {_VALUE},"
            " 'opportunity', source_id, modified_at"
            " from (select record_key, source_id, modified_at, grp,"
            f" unnest({attribute_structs(grouped)}) as a from _src)"
            " where struct_extract(a, 'value') is not null"
        )
    return _opportunity_skips(batch)


def _opportunity_skips(batch: Batch) -> list[SyncEvent]:
    blank = batch.frame(
        "select id from cu_opportunities where nullif(trim(opportunity_type), '') is null"
        " order by id"
    )
    orphans = batch.frame(
        "select id from cu_opportunities where nullif(trim(opportunity_type), '') is not null"
        " and company_id is null and primary_contact_id is null order by id"
    )
    return [
        SyncEvent(
            event="incoming.account.skip",
            object_type="opportunity",
            object_id=str(i),
            reason=reason,
        )
        for frame, reason in (
            (blank, "Blank opportunity type"),
            (orphans, "No company and no primary contact"),
        )
        for i in frame["id"].tolist()
    ]


def stage_opportunity_clears(batch: Batch, attributes: AttributeMap) -> None:
    """Stage clears for every opportunity group the profiles hold (needs ``s_user`` and
    ``s_account`` loaded). The diff drops the clears that this batch's opportunities write, so
    what remains are the groups of deleted (or retyped, or re-targeted) opportunities."""
    names = "[" + ", ".join(quote(n) for n in ["id", *attributes.values()]) + "]"
    for kind in KINDS:
        batch.load_attributes(kind)
        batch.sql(
            f"insert into in_clears select '{kind}', hull_id, left(key, -3) || '/' || name,"
            " 'opportunity', opportunity_id from ("
            "select s.hull_id, j.key, j.value ->> '$' as opportunity_id"
            f" from (select * from sa_{kind}"
            f" where contains(attributes, '\"{COPPER_OPPORTUNITY_GROUP_PREFIX}')) s,"
            " json_each(s.attributes) j"
            f" where starts_with(j.key, '{COPPER_OPPORTUNITY_GROUP_PREFIX}')"
            " and ends_with(j.key, '/id')"
            f"), (select unnest({names}) as name)"
        )


# -- activities ----------------------------------------------------------------------------------
_SKIP_REASON = """
case
    when type_category is distinct from 'user' then 'System activity'
    when parent_type is null or parent_type not in ('person', 'lead')
        then 'Not owned by a person or a lead'
    when parent_id is null then 'No parent id'
    when type_name is null or not list_contains({types}, type_name)
        then 'Activity type not configured'
end
"""


def _stage_activities(batch: Batch, activity_types: list[str]) -> list[SyncEvent]:
    """User activities of configured types on a person or lead become events (shell users for
    parents not pulled yet); the rest are counted per reason."""
    types = "[" + ", ".join(quote(t) for t in activity_types) + "]::varchar[]"
    batch.sql(
        "create or replace temp table _act as select * exclude (fields),"
        f" {_SKIP_REASON.format(types=types)} as skip,"
        " 'copper-' || parent_type || ':' || parent_id as user_key,"
        " json_extract(fields, ['$.details', '$.user_email', '$.user_id']) as v"
        " from cu_activities"
    )
    batch.drop("cu_activities")  # its raw JSON is read: only the extracted values are kept
    batch.sql(
        "insert into in_events select 'copper-activity:' || id, user_key, type_name,"
        " json_object('activity_type_id', type_id, 'details', v[1], 'parent_id', parent_id,"
        " 'parent_type', parent_type, 'user_email', v[2], 'user_id', v[3])::varchar,"
        " activity_date, 'copper', id::varchar from _act where skip is null;"
        "insert into in_records select 'user', user_key, 'activity', id::varchar,"
        " activity_date, true from _act where skip is null"
    )
    skipped = batch.frame("select id, skip from _act where skip is not null order by id")
    return [
        SyncEvent.model_construct(
            event="incoming.event.skip",
            object_type="activity",
            object_id=str(row.id),
            reason=row.skip,
            details={},
        )
        for row in skipped.itertuples()
    ]
