"""Copper records resolved for mapping, and the typed frame of a raw ``copper/*`` table.

Pure: records and metadata in, dicts and DataFrames out. ``normalize`` turns ids into names
(statuses, sources, users, custom field options, ...) so that mappings name fields the way a
Copper user sees them; a value it cannot resolve becomes None plus a reported ``Problem``, never
an exception, because one odd record must not stop a sync.
"""

from __future__ import annotations

import datetime as dt
import enum
import html
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
import pandas as pd

from hull_planhat_pipelines.sync.canonical import row_json
from hull_planhat_pipelines.sync.copper.schema import (
    Column,
    CopperMetadata,
    CopperObject,
    CustomFieldDefinition,
    copper_object,
    int_or_none,
)

log = logging.getLogger(__name__)

CloseDateFormat = Literal["M/D/YYYY", "D/M/YYYY"]
RecordNames = Mapping[str, Mapping[int, str]]
"""Record type (``company``, ``person``, ...) -> id -> name: targets of Connect fields."""
_DAY = 86_400


class _Missing(enum.Enum):
    MISSING = "MISSING"

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing.MISSING
"""A field the record does not carry (leave the attribute alone), unlike None (clear it)."""


@dataclass(frozen=True)
class Problem:
    """A value that could not be resolved; the record still syncs, with that field None."""

    record_id: Any
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


Report = Callable[[str, str], None]


# -- standard and derived fields ---------------------------------------------------------------
_ADDRESS_PARTS = ("street", "city", "state", "postal_code", "country")


def _resolve_ids(
    record: Mapping[str, Any],
    out: dict[str, Any],
    meta: CopperMetadata,
    obj: CopperObject,
    report: Report,
) -> None:
    """Id fields -> names, as the object declares them. A label the record already carries (a
    lead's ``status``) wins."""
    for lookup in obj.lookups:
        field, id_field = lookup.field, lookup.id_field
        if out.get(field) is not None or id_field not in record:
            continue
        key = record[id_field]
        if key is None:
            out[field] = None
            continue
        table: Mapping[int, Any] = getattr(meta, lookup.table)
        if key in table:
            out[field] = table[key]
        else:
            out[field] = None
            report(field, f"unknown {id_field} {key!r}")


def _primary_email(record: Mapping[str, Any], kind: str) -> str | None:
    """A lead has one ``email`` object; a person an ``emails`` list whose first is primary."""
    if kind == "lead":
        email = record.get("email")
    else:
        emails = record.get("emails") or []
        email = emails[0] if emails else None
    return email.get("email") if isinstance(email, dict) else None


def _first(items: Any, key: str) -> Any:
    if isinstance(items, list) and items and isinstance(items[0], dict):
        return items[0].get(key)
    return None


def _flatten_address(address: Any, out: dict[str, Any]) -> None:
    """Copper sends ``postal_code`` (the seed connector read ``postalCode`` and lost it)."""
    parts = address if isinstance(address, dict) else {}
    for part in _ADDRESS_PARTS:
        out[f"address_{part}"] = parts.get(part)


def _activity_fields(
    record: Mapping[str, Any], out: dict[str, Any], meta: CopperMetadata, report: Report
) -> None:
    kind = record.get("type") if isinstance(record.get("type"), dict) else {}
    parent = record.get("parent") if isinstance(record.get("parent"), dict) else {}
    type_id, category = kind.get("id"), kind.get("category")
    out["type_id"], out["type_category"] = type_id, category
    out["type_name"] = meta.activity_type_names.get((category, type_id))
    if out["type_name"] is None and type_id is not None:
        report("type_name", f"unknown {category} activity type {type_id!r}")
    out["parent_type"], out["parent_id"] = parent.get("type"), parent.get("id")
    if isinstance(record.get("details"), str):
        out["details"] = html.unescape(record["details"])


# -- close_date --------------------------------------------------------------------------------
_SLASHED = re.compile(r"^\s*(\d{1,2})/(\d{1,2})/(\d{4})\s*$")
_ISO = re.compile(r"^\s*(\d{4})-(\d{2})-(\d{2})\s*$")


def parse_close_date(value: Any, close_date_format: CloseDateFormat = "M/D/YYYY") -> str | None:
    """ISO ``YYYY-MM-DD`` of Copper's locale-dependent ``close_date`` text; ValueError if bad.

    The account's locale decides whether 3/4/2024 is March 4th or April 3rd: parse it as the
    configured format, never guess. ISO text and Unix seconds are unambiguous and accepted too.
    """
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return unix_to_date(value)
    text = str(value)
    if match := _ISO.match(text):
        year, month, day = (int(g) for g in match.groups())
    elif match := _SLASHED.match(text):
        first, second, year = (int(g) for g in match.groups())
        month, day = (first, second) if close_date_format == "M/D/YYYY" else (second, first)
    else:
        raise ValueError(f"{text!r} is not a {close_date_format} date")
    try:
        return dt.date(year, month, day).isoformat()
    except ValueError:
        raise ValueError(f"{text!r} is not a valid {close_date_format} date") from None


def unix_to_date(seconds: int) -> str:
    """ISO date of a Copper Date value: Unix seconds at the account's local midnight, so the
    nearest UTC midnight is the date meant (for offsets within +-12 h)."""
    return dt.date.fromordinal(
        dt.date(1970, 1, 1).toordinal() + (seconds + _DAY // 2) // _DAY
    ).isoformat()


# -- custom fields -----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Context:
    meta: CopperMetadata
    names: RecordNames
    report: Report


def _dropdown(d: CustomFieldDefinition, value: Any, ctx: _Context) -> Any:
    name = ctx.meta.field_options[d.id].get(value)
    if name is None:
        ctx.report(f"custom:{d.name}", f"unknown option {value!r}")
    return name


def _multiselect(d: CustomFieldDefinition, value: Any, ctx: _Context) -> list[str]:
    """Option names in Copper's order, each once; [] stays [] so that it clears the attribute."""
    options = ctx.meta.field_options[d.id]
    names: list[str] = []
    for option in value if isinstance(value, list) else [value]:
        name = options.get(option)
        if name is None:
            ctx.report(f"custom:{d.name}", f"unknown option {option!r}")
        elif name not in names:
            names.append(name)
    return names


def _currency(d: CustomFieldDefinition, value: Any, ctx: _Context) -> dict[str, Any]:
    return {"amount": value, "currency": d.currency}


def _connect(d: CustomFieldDefinition, value: Any, ctx: _Context) -> dict[str, list[Any]]:
    """Connected record ids, and the names of those the caller knows (in the same order)."""
    targets = _connect_targets(d, ctx)
    ids = [item.get("id") if isinstance(item, dict) else item for item in _as_list(value)]
    names = []
    for key in ids:
        name = next((ctx.names[t][key] for t in targets if key in ctx.names.get(t, {})), None)
        if name is not None:
            names.append(name)
    return {"ids": ids, "names": names}


def connect_targets(
    object_name: str | CopperObject, records: Iterable[Mapping[str, Any]], metadata: CopperMetadata
) -> dict[str, set[int]]:
    """Record type -> ids the records' Connect fields point to: the names the resolver needs.
    A field whose partner definition is unknown names no target and is left unresolved."""
    kind = copper_object(object_name).record_type
    connects = {
        d.id: d
        for d in metadata.custom_field_definitions
        if d.data_type == "Connect" and (not d.available_on or kind in d.available_on)
    }
    wanted: dict[str, set[int]] = {}
    if not connects:
        return wanted
    for record in records:
        for entry in record.get("custom_fields") or ():
            definition = connects.get(entry.get("custom_field_definition_id"))
            if definition is None or not entry.get("value"):
                continue
            partner = metadata.field_definitions.get(definition.connected_id or -1)
            ids = [
                int_or_none(item.get("id") if isinstance(item, dict) else item)
                for item in _as_list(entry["value"])
            ]
            for target in partner.available_on if partner else ():
                wanted.setdefault(target, set()).update(i for i in ids if i is not None)
    return wanted


def _connect_targets(d: CustomFieldDefinition, ctx: _Context) -> list[str]:
    """The partner definition's ``available_on`` names the target; unknown: look everywhere."""
    partner = ctx.meta.field_definitions.get(d.connected_id) if d.connected_id is not None else None
    return list(partner.available_on) if partner and partner.available_on else list(ctx.names)


def _date(d: CustomFieldDefinition, value: Any, ctx: _Context) -> str | None:
    try:
        return unix_to_date(int(value))
    except (TypeError, ValueError, OverflowError):
        ctx.report(f"custom:{d.name}", f"date {value!r} is not Unix seconds")
        return None


def _checkbox(d: CustomFieldDefinition, value: Any, ctx: _Context) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


_CUSTOM: dict[str, Callable[[CustomFieldDefinition, Any, _Context], Any]] = {
    "Dropdown": _dropdown,
    "MultiSelect": _multiselect,
    "Currency": _currency,
    "Connect": _connect,
    "Date": _date,
    "Checkbox": _checkbox,
}
"""data_type -> resolver of a non-null value; String, Text, URL, Float, Percentage stay raw."""


def _custom_fields(record: Mapping[str, Any], out: dict[str, Any], ctx: _Context) -> None:
    """``custom:<name>`` per listed custom field; unset (null) values stay None."""
    definitions = ctx.meta.field_definitions
    for entry in record.get("custom_fields") or ():
        key, value = entry.get("custom_field_definition_id"), entry.get("value")
        definition = definitions.get(key)
        if definition is None:
            out[f"custom:{key}"] = value
            ctx.report(f"custom:{key}", "unknown custom field definition")
            continue
        resolve = _CUSTOM.get(definition.data_type)
        out[f"custom:{definition.name}"] = (
            value if resolve is None or value is None else resolve(definition, value, ctx)
        )


# -- normalize ---------------------------------------------------------------------------------
def normalize(
    object_name: str | CopperObject,
    record: Mapping[str, Any],
    metadata: CopperMetadata,
    *,
    close_date_format: CloseDateFormat = "M/D/YYYY",
    record_names: RecordNames | None = None,
    problems: list[Problem] | None = None,
) -> dict[str, Any]:
    """A flat dict of one record's fields as a mapping names them.

    Standard fields as Copper sends them (``custom_fields`` aside), derived ones (names for
    ids, ``primary_email``, ``phone``, ``address_*``, ISO ``close_date``, activity ``type_name``
    and ``parent_*``) and ``custom:<name>`` per custom field. Unresolvable values become None and
    are appended to ``problems`` when a list is given.
    """
    obj = copper_object(object_name)
    kind = obj.record_type

    def report(field: str, message: str) -> None:
        if problems is not None:
            problems.append(Problem(record.get("id"), field, message))

    out = dict(record)
    out.pop("custom_fields", None)
    if kind in ("lead", "person"):
        out["primary_email"] = _primary_email(record, kind)
    if "phone_numbers" in record:
        out["phone"] = _first(record["phone_numbers"], "number")
    if "address" in record:
        _flatten_address(record["address"], out)
    _resolve_ids(record, out, metadata, obj, report)
    if "close_date" in record:
        try:
            out["close_date"] = parse_close_date(record["close_date"], close_date_format)
        except ValueError as exc:
            out["close_date"] = None
            report("close_date", str(exc))
    if kind == "activity":
        _activity_fields(record, out, metadata, report)
    _custom_fields(record, out, _Context(metadata, record_names or {}, report))
    return out


def field_value(normalized: Mapping[str, Any], field_name: str) -> Any:
    """The value a configured field name points to, or ``MISSING`` if the record lacks it.

    ``custom:<Name>`` is a custom field; a plain name is a standard or derived field, else the
    custom field of that name (``assignee_planhat_id`` in the example configuration).
    """
    if field_name.startswith("custom:"):
        return normalized.get(field_name, MISSING)
    if field_name in normalized:
        return normalized[field_name]
    return normalized.get(f"custom:{field_name}", MISSING)


# -- the raw table frame -----------------------------------------------------------------------
_PANDAS_DTYPES: dict[str, Any] = {
    "id": "int64",
    "int": "Int64",
    "float": "Float64",
    "text": "string",
    "timestamp": "datetime64[ns, UTC]",
    "date": "object",
}
_DUCKDB_TYPES = {
    "id": "BIGINT",
    "int": "BIGINT",
    "float": "DOUBLE",
    "text": "VARCHAR",
    "timestamp": "TIMESTAMPTZ",
    "date": "DATE",
}
_HEAD = (
    Column("id", "id"),
    Column("name", "text"),
    Column("primary_email", "text"),
    Column("date_created", "timestamp"),
    Column("date_modified", "timestamp"),
)
_TAIL = (
    Column("partition_date", "date"),
    Column("record", "text"),
    Column("fields", "text"),
    Column("problems", "text"),
    Column("_fetched_at", "timestamp"),
)


def frame_columns(object_name: str | CopperObject) -> tuple[Column, ...]:
    """The columns of ``copper.<object>``, in order: the same whatever the records."""
    return (*_HEAD, *copper_object(object_name).columns, *_TAIL)


def frame_dtypes(object_name: str | CopperObject) -> dict[str, Any]:
    return {c.name: _PANDAS_DTYPES[c.kind] for c in frame_columns(object_name)}


def duckdb_types(object_name: str | CopperObject) -> dict[str, str]:
    """Column -> DuckDB type. pandas has no date dtype (without pyarrow): ``partition_date`` is
    an object column of dates, typed DATE only when rows exist, so create tables from this."""
    return {c.name: _DUCKDB_TYPES[c.kind] for c in frame_columns(object_name)}


def records_frame(
    object_name: str | CopperObject,
    records: Iterable[Mapping[str, Any]],
    metadata: CopperMetadata,
    *,
    fetched_at: dt.datetime,
    partition_start: dt.date,
    close_date_format: CloseDateFormat = "M/D/YYYY",
    opportunity_type_field: str | None = None,
    record_names: RecordNames | None = None,
) -> pd.DataFrame:
    """One typed row per record id (the newest by the object's date), ready for its table.

    ``partition_date`` is the UTC day of the windowing date, clamped up to ``partition_start``:
    the first partition holds everything older. ``problems`` lists what could not be resolved
    (JSON, null when none). ``fetched_at`` must be timezone-aware (naive is taken as UTC).
    """
    obj = copper_object(object_name)
    kept = _newest_per_id(without_deleted(obj.name, records), obj)
    typed = (*_HEAD, *obj.columns)
    values: dict[str, list[Any]] = {c.name: [] for c in (*typed, *_TAIL)}
    for record in kept:  # one pass; each normalized dict is dropped once encoded (memory)
        found: list[Problem] = []
        row = normalize(
            obj,
            record,
            metadata,
            close_date_format=close_date_format,
            record_names=record_names,
            problems=found,
        )
        if obj.name == "opportunities":  # the value naming the opportunity's attribute group
            kind = field_value(row, opportunity_type_field) if opportunity_type_field else None
            row["opportunity_type"] = _text(kind)
        for column in typed:
            values[column.name].append(row.get(column.name))
        values["partition_date"].append(row.get(obj.date_field))
        values["record"].append(row_json(record))
        values["fields"].append(row_json(row))
        values["problems"].append(row_json([str(p) for p in found]) if found else None)
    _log_problems(obj.name, values["problems"])
    columns = {c.name: _typed(c, values.pop(c.name)) for c in typed}
    columns["partition_date"] = _partition_dates(values.pop("partition_date"), partition_start)
    for name in ("record", "fields", "problems"):
        columns[name] = pd.array(values.pop(name), dtype="string")
    columns["_fetched_at"] = _fetched_at_column(fetched_at, len(kept))
    return pd.DataFrame(columns).astype(frame_dtypes(obj), copy=False)


def is_deleted_stub(record: Mapping[str, Any]) -> bool:
    """Copper answers deleted activities as ``{"id": ..., "is_deleted": true}`` stubs."""
    return record.get("is_deleted") is True


def without_deleted(
    object_name: str, records: Iterable[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    """The records minus deletion stubs and every version of a stubbed id: a deleted activity
    must leave its partition, not land in the first one for want of a date."""
    kept = list(records)
    deleted = {r.get("id") for r in kept if is_deleted_stub(r)}
    if not deleted:
        return kept
    log.info("copper/%s: %d deleted records (stubs) left out", object_name, len(deleted))
    return [r for r in kept if r.get("id") not in deleted]


def _newest_per_id(records: list[Mapping[str, Any]], obj: CopperObject) -> list[Mapping[str, Any]]:
    """The newest version of each id (ties: the later one), in the order of those versions
    (input sorted by date stays sorted)."""
    best: dict[int, tuple[int, int]] = {}
    skipped = 0
    for index, record in enumerate(records):
        key = int_or_none(record.get("id"))
        if key is None:
            skipped += 1
            continue
        date = int_or_none(record.get(obj.date_field))
        date = -1 if date is None else date
        previous = best.get(key)
        if previous is None or date >= previous[0]:
            best[key] = (date, index)
    if skipped:
        log.warning("copper/%s: %d records without an id skipped", obj.name, skipped)
    return [records[index] for _, index in sorted(best.values(), key=lambda pair: pair[1])]


def _typed(column: Column, values: list[Any]) -> Any:
    if column.kind == "id":
        return np.array(values, dtype="int64")
    if column.kind == "int":
        return pd.array([int_or_none(v) for v in values], dtype="Int64")
    if column.kind == "float":
        return pd.array([_float(v) for v in values], dtype="Float64")
    if column.kind == "timestamp":
        seconds = np.array([_float(v) for v in values], dtype="float64")
        return pd.to_datetime(seconds, unit="s", utc=True)
    return pd.array([_text(v) for v in values], dtype="string")


def _partition_dates(seconds: list[Any], partition_start: dt.date) -> np.ndarray:
    """UTC day of each date, clamped up to the first partition (unknown dates go there too)."""
    first = partition_start.toordinal() - dt.date(1970, 1, 1).toordinal()
    cache: dict[int, dt.date] = {}
    out = np.empty(len(seconds), dtype=object)
    for index, value in enumerate(seconds):
        number = int_or_none(value)
        day = first if number is None else max(first, number // _DAY)
        if day not in cache:
            cache[day] = dt.date.fromordinal(day + dt.date(1970, 1, 1).toordinal())
        out[index] = cache[day]
    return out


def _fetched_at_column(fetched_at: dt.datetime, rows: int) -> pd.DatetimeIndex:
    """One instant, repeated as an array: an index built from a list of ``rows`` Timestamps
    costs 1.4 s a million rows (0.6 s of a full load at 100,000 people)."""
    moment = pd.Timestamp(fetched_at)
    moment = moment.tz_localize("UTC") if moment.tzinfo is None else moment.tz_convert("UTC")
    instant = moment.tz_localize(None).as_unit("ns").to_datetime64()
    return pd.DatetimeIndex(np.full(rows, instant)).tz_localize("UTC")


def _log_problems(object_name: str, problems: list[str | None]) -> None:
    count = sum(p is not None for p in problems)
    if count:
        sample = next(p for p in problems if p is not None)
        log.warning(
            "copper/%s: %d records with unresolved fields, e.g. %s", object_name, count, sample
        )


def _float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _text(value: Any) -> str | None:
    if value is None or value is MISSING:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)
