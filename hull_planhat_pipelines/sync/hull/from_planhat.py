"""Planhat snapshot rows -> staged records, claims, attributes (group ``planhat/``) and links.

Planhat can only be read as full snapshots, and it bumps ``updatedAt`` on every write (ours
included), so a record is staged only when what we take from it changed since the snapshot
last applied: its mapped fields (``updatedAt`` excluded) and its identity (external id, email,
company). The diff against the profile store then drops whatever still equals the profile.

Null vs missing: a mapped field the record lacks writes nothing, except when the previous
snapshot had it: Planhat omits unset fields, so a field that disappeared was cleared.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd

from hull_planhat_pipelines.settings import AttributeMap, PlanhatIncoming
from hull_planhat_pipelines.sync.hull.batch import Batch, quote
from hull_planhat_pipelines.sync.hull.model import (
    PLANHAT_GROUP,
    PLANHAT_OBJECTS,
    PLANHAT_PREFIX,
    PLANHAT_WRITER,
    PLANHAT_WRITER_ATTRIBUTE,
)
from hull_planhat_pipelines.sync.hull.sql import (
    INVALID_EMAIL,
    JsonFields,
    canonical_value,
    matching_text,
    unique_names,
    valid_email,
)
from hull_planhat_pipelines.sync.log import SyncEvent

VOLATILE_FIELDS = frozenset({"updatedAt"})
"""Fields Planhat changes on every write: never evidence of a change."""


@dataclass(frozen=True)
class PlanhatRows:
    """Current snapshot rows, and the snapshot last applied (None: nothing applied yet)."""

    companies: pd.DataFrame | None = None
    endusers: pd.DataFrame | None = None
    previous_companies: pd.DataFrame | None = None
    previous_endusers: pd.DataFrame | None = None
    gone: Mapping[str, Sequence[str]] = field(default_factory=dict)
    """Per snapshot name (``companies``, ``endusers``), the ``_id`` of records absent from two
    snapshots in a row: deleted (one missed listing is not enough: an offset can shift)."""


@dataclass(frozen=True)
class _Model:
    name: str
    kind: str
    source_object: str
    identity: tuple[str, ...]
    """Typed columns that identify or link the record (part of the change fingerprint)."""
    claims: dict[str, str]
    """claim -> typed column."""


_COMPANY = _Model("companies", "account", PLANHAT_OBJECTS["account"], ("external_id",), {})
_ENDUSER = _Model(
    "endusers",
    "user",
    PLANHAT_OBJECTS["user"],
    ("external_id", "email", "company_id"),
    {"email": "email"},
)


def unapplied_records(log: Iterable[SyncEvent]) -> dict[str, set[str]]:
    """Per snapshot name, the ``_id`` of records this sync skipped whole (an invalid email):
    Hull's copy keeps their last applied row, so once fixed they are compared with what Hull
    holds, and a field cleared meanwhile is cleared too."""
    models = {model.source_object: model.name for model in (_COMPANY, _ENDUSER)}
    found: dict[str, set[str]] = {}
    for event in log:
        name = models.get(str(event.object_type))
        if name is not None and event.reason == INVALID_EMAIL and event.object_id is not None:
            found.setdefault(name, set()).add(str(event.object_id))
    return found


def map_planhat(batch: Batch, rows: PlanhatRows, incoming: PlanhatIncoming) -> list[SyncEvent]:
    """Stage the Planhat records that changed since the previous snapshot."""
    events: list[SyncEvent] = []
    if rows.companies is not None:
        events += _stage(
            batch, _COMPANY, rows.companies, rows.previous_companies, incoming.company_attributes
        )
    if rows.endusers is not None:
        events += _stage(
            batch, _ENDUSER, rows.endusers, rows.previous_endusers, incoming.enduser_attributes
        )
        _stage_links(batch)
    for model in (_COMPANY, _ENDUSER):
        ids = [str(_id) for _id in rows.gone.get(model.name, ()) if _id]
        if ids:
            batch.load("_gone_ids", pd.DataFrame({"_id": ids}, dtype=object), "_id::varchar as _id")
            batch.sql(
                f"insert into in_gone select '{model.kind}', {quote(PLANHAT_PREFIX)} || _id"
                " from _gone_ids"
            )
            batch.drop("_gone_ids")
    batch.drop("ph_current", "ph_previous", "_cur", "_prev", "_src")
    return events


def _load(batch: Batch, table: str, frame: pd.DataFrame | None, model: _Model) -> None:
    columns = ["_id", *model.identity, "record"]
    if frame is None:
        typed = ", ".join(f"null::varchar as {c}" for c in columns)
        batch.sql(
            f"create or replace temp table {table} as select {typed},"
            " null::timestamptz as updated_at limit 0"
        )
        return
    updated = "updated_at::timestamptz" if "updated_at" in frame.columns else "null::timestamptz"
    typed = ", ".join(f"{c}::varchar as {c}" for c in columns)
    batch.load(table, frame, f"{typed}, {updated} as updated_at")


def _stage(
    batch: Batch,
    model: _Model,
    current: pd.DataFrame,
    previous: pd.DataFrame | None,
    attributes: AttributeMap,
) -> list[SyncEvent]:
    _load(batch, "ph_current", current, model)
    _load(batch, "ph_previous", previous, model)
    events = _invalid_records(batch, model)
    events += _unusable_records(batch, model)
    fields = JsonFields()
    named = unique_names(attributes, reserved=(PLANHAT_WRITER,))
    values = {name: fields.planhat_field(field) for field, name in named.items()}
    watched = [fields.planhat_field(f) for f in attributes if f not in VOLATILE_FIELDS]

    def identity(alias: str) -> str:
        return "[" + ", ".join(f"{alias}.{column}" for column in model.identity) + "]"

    # with no snapshot applied before, no profile holds a Planhat group: nothing to clear
    whole = (
        "false"
        if previous is None
        else f"p._id is null or {identity('c')} is distinct from {identity('p')}"
    )

    def fingerprint(alias: str) -> str:
        parts = [f"({JsonFields.rebase(e, f'{alias}.v')})::varchar" for e in watched]
        parts += [f"{alias}.{column}" for column in model.identity]
        return "[" + ", ".join(parts) + "]::varchar[]"

    batch.sql(
        "create or replace temp table _cur as select *,"
        f" {fields.extraction('record')} from ph_current where _id is not null;"
        "create or replace temp table _prev as select *,"
        f" {fields.extraction('record')} from ph_previous where _id is not null;"
        "create or replace temp table _src as"
        " select 'planhat:' || c._id as record_key, c._id as source_id,"
        f" c.updated_at as modified_at, c.* exclude (_id), p.v as pv,"
        f" {whole} as whole"
        " from _cur c left join _prev p using (_id)"
        f" where p._id is null or {fingerprint('c')} is distinct from {fingerprint('p')}"
    )
    batch.sql(
        f"insert into in_records select '{model.kind}', record_key, '{model.source_object}',"
        " source_id, modified_at, false from _src"
    )
    for claim, column in {"external_id": "external_id", **model.claims}.items():
        batch.sql(
            f"insert into in_claims select '{model.kind}', record_key, '{claim}', {column}"
            f" from _src where nullif({column}, '') is not null"
        )
    _stage_attributes(batch, model, values)
    return events


def _unusable_records(batch: Batch, model: _Model) -> list[SyncEvent]:
    """Rows without ``_id`` (nothing to key them by), and endusers whose email is not an
    address: each skipped with its reason, never merged into another or sent anywhere.
    Emails are trimmed and lower-cased as every claim is."""
    skipped = []
    missing = batch.frame("select record from ph_current where nullif(trim(_id), '') is null")
    batch.sql("delete from ph_current where nullif(trim(_id), '') is null")
    skipped += [
        SyncEvent(
            event=f"incoming.{model.kind}.skip",
            object_type=model.source_object,
            reason="No _id",
            details={"record": (row.record or "")[:300]},
        )
        for row in missing.itertuples(index=False)
    ]
    if "email" in model.claims:
        email = matching_text("email")
        batch.sql(f"update ph_current set email = {email}; update ph_previous set email = {email}")
        invalid = batch.frame(  # each address tested once
            f"delete from ph_current where email is not null and not {valid_email('email')}"
            " returning _id"
        )
        skipped += [
            SyncEvent(
                event="incoming.user.skip",
                object_type=model.source_object,
                object_id=_id,
                reason=INVALID_EMAIL,
            )
            for _id in _in_order(invalid["_id"])
        ]
    return skipped


def _invalid_records(batch: Batch, model: _Model) -> list[SyncEvent]:
    """Rows whose ``record`` is not JSON: left out (a previous one is simply not compared)."""
    invalid = "record is null or not json_valid(record)"
    bad = batch.frame(f"delete from ph_current where {invalid} returning _id")
    batch.sql(f"delete from ph_previous where {invalid}")
    return [
        SyncEvent(
            event=f"incoming.{model.kind}.error",
            object_type=model.source_object,
            object_id=_id,
            reason="Invalid record JSON",
        )
        for _id in _in_order(bad["_id"])
    ]


def _in_order(ids: pd.Series) -> list[str | None]:
    """Removed records' ids as SQL ordered them before the ``returning`` delete (which keeps
    no order): ascending, a missing one last."""
    return ids.sort_values(na_position="last").tolist()


def _stage_attributes(batch: Batch, model: _Model, values: dict[str, str]) -> None:
    """Current value; JSON null when the field disappeared since the previous snapshot, and
    for every field the record lacks when it is new or its identity changed: it may resolve
    to a profile whose ``planhat/`` group another record wrote (two endusers trading emails,
    an enduser recreated), and the group must then be this record's, not a blend."""
    batch.sql(
        f"insert into in_writes select '{model.kind}', record_key, '{PLANHAT_GROUP}',"
        f" '{model.source_object}', source_id, modified_at from _src;"
        f"insert into in_attributes select '{model.kind}', record_key, '{PLANHAT_GROUP}',"
        f" {quote(PLANHAT_WRITER_ATTRIBUTE)}, {canonical_value('to_json(source_id)')},"
        f" '{model.source_object}', source_id, modified_at from _src"
    )
    for name, expr in values.items():
        previous = JsonFields.rebase(expr, "pv")
        value = f"coalesce({expr}, case when whole or {previous} is not null then 'null'::json end)"
        batch.sql(
            f"insert into in_attributes select '{model.kind}', record_key,"
            f" '{PLANHAT_GROUP}', {quote(f'{PLANHAT_GROUP}/{name}')}, {canonical_value(value)},"
            f" '{model.source_object}', source_id, modified_at from _src where {value} is not null"
        )


def _stage_links(batch: Batch) -> None:
    """enduser -> account ``planhat:<companyId>`` (a shell until that company is staged)."""
    batch.sql(
        "insert into in_links select record_key, 'planhat:' || company_id, 'planhat_enduser',"
        " source_id, modified_at from _src where nullif(company_id, '') is not null;"
        "insert into in_records select 'account', 'planhat:' || company_id, 'planhat_enduser',"
        " source_id, modified_at, true from _src where nullif(company_id, '') is not null"
    )
