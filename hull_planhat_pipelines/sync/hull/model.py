"""The Hull profile model: table contracts, identity vocabulary, stable ids, canonical JSON.

Shared by the mappers, identity resolution, diffing and applying, so that every step agrees on
what a profile looks like. Pure: no Dagster, no HTTP.

Conventions every step relies on:
- A staged record's ``record_key`` is its anonymous id (``copper-person:34``, ``planhat:5f1c``):
  one key per source record, and always one of its identity claims.
- Attribute values travel as canonical JSON text; SQL NULL means JSON null ("clear it"). A
  profile's ``attributes`` never hold nulls: clearing an attribute removes the key.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any, Literal

import numpy as np
import pandas as pd

from hull_planhat_pipelines.sync.canonical import value_json

Kind = Literal["user", "account"]
KINDS: tuple[Kind, ...] = ("user", "account")

# -- groups and anonymous ids (DESIGN.md section 2) ---------------------------------------------
COPPER_LEAD_GROUP = "copper_lead"
COPPER_PERSON_GROUP = "copper_person"
COPPER_COMPANY_GROUP = "copper"
COPPER_OPPORTUNITY_GROUP_PREFIX = "copper_opportunity_"
PLANHAT_GROUP = "planhat"
PLANHAT_PREFIX = "planhat:"
"""The anonymous id of a Planhat record: ``planhat:<_id>``."""
PLANHAT_OBJECTS = {"user": "planhat_enduser", "account": "planhat_company"}
"""The ``source_object`` of Planhat's records, per kind of profile."""
PLANHAT_WRITER = "id"
"""``planhat/id``: the ``_id`` of the Planhat record that wrote the profile's ``planhat/``
group (reserved: no mapped field takes the name). A deletion detaches the profiles it wrote,
which after two endusers traded emails are not the ones holding its anonymous id."""
PLANHAT_WRITER_ATTRIBUTE = f"{PLANHAT_GROUP}/{PLANHAT_WRITER}"
PLANHAT_WRITER_PATH = f'$."{PLANHAT_WRITER_ATTRIBUTE}"'
"""The JSON path of ``planhat/id`` in a profile's attributes."""
WRITER_CLAIM = "planhat_writer"
"""A store key (not an identity claim): profiles whose ``planhat/id`` is the value."""


# -- identity --------------------------------------------------------------------------------
DOMAIN_CLAIM = {"user": "email", "account": "domain"}
"""The claim each kind has besides ``external_id`` and ``anonymous_id``."""
PRECEDENCE = {"external_id": 1, "email": 2, "domain": 2, "anonymous_id": 3}
"""Resolution order: a lower number wins when claims point to different profiles."""


def stable_id(kind: Kind, key: str) -> str:
    """The hull_id a new profile gets: a name-based UUID of its smallest anonymous id.

    Deterministic so that a rerun over the same input creates the same ids. Matches the SQL
    macro ``hull_stable_id`` (md5 of ``hull:<kind>:<key>``, version and variant bits set).
    """
    digest = hashlib.md5(f"hull:{kind}:{key}".encode()).hexdigest()
    return str(uuid.UUID(hex=digest, version=3))


STABLE_ID_SQL = """
create or replace macro hull_uuid_from_md5(x) as
    substr(x, 1, 8) || '-' || substr(x, 9, 4) || '-3' || substr(x, 14, 3) || '-'
    || substr('89ab', (('0x' || substr(x, 17, 1))::integer & 3) + 1, 1) || substr(x, 18, 3)
    || '-' || substr(x, 21, 12);
create or replace macro hull_stable_id(kind, key) as
    hull_uuid_from_md5(md5('hull:' || kind || ':' || key));
"""

# -- canonical JSON --------------------------------------------------------------------------
CANONICAL_SQL = r"""
create or replace macro hull_canonical_scalar(v) as
    case when suffix(v, '.0') then
        case when v = '-0.0' then '0'
             when regexp_full_match(v, '-?[0-9]+\.0') then left(v, -2)
             else v end
    else v end;
"""
"""Integral numbers lose their ``.0`` (DuckDB writes doubles as ``1.0``, Copper may send
``1``): an amount that did not change never becomes an upsert. Objects and arrays go through
``sync.canonical.value_json`` instead (sorted keys)."""


# -- table contracts -------------------------------------------------------------------------
USER_COLUMNS = [
    "hull_id",
    "email",
    "external_id",
    "anonymous_ids",
    "account_hull_id",
    "attributes",
    "created_at",
    "updated_at",
]
ACCOUNT_COLUMNS = [
    "hull_id",
    "domain",
    "external_id",
    "anonymous_ids",
    "attributes",
    "created_at",
    "updated_at",
]
EVENT_COLUMNS = [
    "event_id",
    "user_hull_id",
    "name",
    "properties",
    "occurred_at",
    "source",
    "source_id",
]
UPSERT_TAIL = [
    "anonymous_id",
    "attribute",
    "value",
    "previous",
    "source_object",
    "source_id",
    "is_new_profile",
]
USER_UPSERT_COLUMNS = ["hull_id", "email", "external_id", *UPSERT_TAIL]
"""One row per changed (user, attribute): ``value`` and ``previous`` are JSON text, a null
``value`` clears the attribute; ``anonymous_id`` is the source record's."""
ACCOUNT_UPSERT_COLUMNS = ["hull_id", "domain", "external_id", *UPSERT_TAIL]
CLAIM_COLUMNS = ["hull_id", "claim", "value", "is_new_profile", "source_object", "source_id"]
"""Identity claims a profile gains (every claim of a new profile, shells included)."""
LINK_COLUMNS = [
    "user_hull_id",
    "account_hull_id",
    "previous_account_hull_id",
    "source_object",
    "source_id",
]
MERGE_COLUMNS = ["kind", "from_hull_id", "into_hull_id"]
"""Anonymous-only profiles (shells) absorbed by the profile their records resolved to."""
CONFLICT_COLUMNS = [
    "kind",
    "record",
    "claim",
    "value",
    "resolved_hull_id",
    "other_hull_id",
    "reason",
]

STORE_COLUMNS: dict[Kind, list[str]] = {"user": USER_COLUMNS, "account": ACCOUNT_COLUMNS}
UPSERT_COLUMNS: dict[Kind, list[str]] = {
    "user": USER_UPSERT_COLUMNS,
    "account": ACCOUNT_UPSERT_COLUMNS,
}

STORE_SQL_TYPES: dict[str, str] = {
    "hull_id": "VARCHAR",
    "email": "VARCHAR",
    "domain": "VARCHAR",
    "external_id": "VARCHAR",
    "anonymous_ids": "VARCHAR[]",
    "account_hull_id": "VARCHAR",
    "attributes": "VARCHAR",
    "created_at": "TIMESTAMPTZ",
    "updated_at": "TIMESTAMPTZ",
}


def empty_store(kind: Kind) -> pd.DataFrame:
    """A profile table with no rows and the contract's columns."""
    frame = pd.DataFrame({c: pd.Series([], dtype=object) for c in STORE_COLUMNS[kind]})
    for column in ("created_at", "updated_at"):
        frame[column] = pd.Series([], dtype="datetime64[ns, UTC]")
    return frame


def empty_events() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series([], dtype=object) for c in EVENT_COLUMNS})
    frame["occurred_at"] = pd.Series([], dtype="datetime64[ns, UTC]")
    return frame


def normalize_store(frame: pd.DataFrame | None, kind: Kind) -> pd.DataFrame:
    """The store as this package reads it: contract columns present, ``attributes`` as JSON text.

    The warehouse hands back JSON text; a caller may hold dicts. Only a column that is not
    already all text pays for a per-row conversion.
    """
    if frame is None:
        return empty_store(kind)
    missing = [c for c in STORE_COLUMNS[kind] if c not in frame.columns]
    if missing:
        frame = frame.copy()
        for column in missing:
            frame[column] = None
    attributes = frame["attributes"]
    if len(frame) and pd.api.types.infer_dtype(attributes, skipna=False) != "string":
        frame = frame.copy()
        frame["attributes"] = attributes.map(_attributes_text)
    return frame


def _attributes_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "{}"
    if isinstance(value, str):
        return value
    return value_json({k: v for k, v in dict(value).items() if v is not None})
