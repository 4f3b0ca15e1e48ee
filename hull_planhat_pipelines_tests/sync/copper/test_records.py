"""Pure tests of Copper record normalization and the raw-table frame (no server)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import duckdb
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hull_planhat_pipelines.sync.copper.records import (
    MISSING,
    Problem,
    connect_targets,
    duckdb_types,
    field_value,
    frame_dtypes,
    normalize,
    parse_close_date,
    records_frame,
)
from hull_planhat_pipelines.sync.copper.schema import COPPER_OBJECTS, CopperMetadata
from hull_planhat_pipelines.sync.hull.model import CANONICAL_SQL
from hull_planhat_pipelines.sync.hull.sql import JsonFields, canonical_value

UTC = dt.UTC
JAN_1_2024 = 1_704_067_200  # 2024-01-01T00:00:00Z


def _definition(def_id: int, name: str, data_type: str, on: list[str], **extra: Any) -> dict:
    return {"id": def_id, "name": name, "data_type": data_type, "available_on": on, **extra}


METADATA = CopperMetadata.model_validate(
    {
        "custom_field_definitions": [
            _definition(1, "Nickname", "String", ["person"]),
            _definition(2, "Notes", "Text", ["person"]),
            _definition(3, "Homepage", "URL", ["person"]),
            _definition(4, "Lead Score", "Float", ["lead"]),
            _definition(5, "Discount", "Percentage", ["opportunity"]),
            _definition(6, "ARR", "Currency", ["company"], currency="EUR"),
            _definition(7, "Newsletter", "Checkbox", ["person"]),
            _definition(8, "Next Renewal", "Date", ["company"]),
            _definition(
                9, "Plan", "Dropdown", ["person"], options=[{"id": 90, "name": "Pro", "rank": 0}]
            ),
            _definition(
                10,
                "Interests",
                "MultiSelect",
                ["person"],
                options=[{"id": 100, "name": "Security"}, {"id": 101, "name": "Mobile"}],
            ),
            _definition(11, "Partner Company", "Connect", ["opportunity"], connected_id=12),
            _definition(12, "Partner Opportunities", "Connect", ["company"], connected_id=11),
            _definition(13, "assignee_planhat_id", "String", ["company"]),
            _definition(14, "Opportunity Type", "Dropdown", ["opportunity"], options=[]),
        ],
        "activity_types": {
            "user": [{"id": 0, "category": "user", "name": "Note"}],
            "system": [{"id": 1, "category": "system", "name": "Property Changed"}],
        },
        "pipelines": [{"id": 20, "name": "Sales", "stages": [{"id": 21, "name": "Qualified"}]}],
        "lead_statuses": [{"id": 30, "name": "New"}],
        "customer_sources": [{"id": 40, "name": "Webinar"}],
        "contact_types": [{"id": 50, "name": "Customer"}],
        "loss_reasons": [{"id": 60, "name": "Price"}],
        "users": [{"id": 70, "name": "Sam", "email": "sam@example.com"}],
    }
)


def _resolve(kind: str, record: dict, **kw: Any) -> tuple[dict, list[Problem]]:
    problems: list[Problem] = []
    return normalize(kind, {"id": 1, **record}, METADATA, problems=problems, **kw), problems


def _custom(kind: str, def_id: int, value: Any, **kw: Any) -> tuple[dict, list[Problem]]:
    entry = {"custom_field_definition_id": def_id, "value": value}
    return _resolve(kind, {"custom_fields": [entry]}, **kw)


# -- custom fields, one test per data type ---------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "def_id", "value", "name", "expected"),
    [
        ("people", 1, "Ada", "Nickname", "Ada"),
        ("people", 2, "long text", "Notes", "long text"),
        ("people", 3, "https://example.com", "Homepage", "https://example.com"),
        ("leads", 4, 7.5, "Lead Score", 7.5),
        ("opportunities", 5, 12.5, "Discount", 12.5),
        ("companies", 6, 120000, "ARR", {"amount": 120000, "currency": "EUR"}),
        ("people", 7, True, "Newsletter", True),
        ("people", 7, False, "Newsletter", False),
        ("companies", 8, JAN_1_2024, "Next Renewal", "2024-01-01"),
        ("people", 9, 90, "Plan", "Pro"),
        ("people", 10, [101, 100], "Interests", ["Mobile", "Security"]),
        ("people", 10, [], "Interests", []),
        ("opportunities", 11, [500], "Partner Company", {"ids": [500], "names": ["Acme"]}),
    ],
)
def test_custom_field_resolved_by_type(
    kind: str, def_id: int, value: Any, name: str, expected: Any
) -> None:
    names = {"company": {500: "Acme"}, "person": {500: "Not a company"}}
    fields, problems = _custom(kind, def_id, value, record_names=names)
    assert fields[f"custom:{name}"] == expected
    assert problems == []
    assert "custom_fields" not in fields


def test_connect_ids_without_known_names_keep_ids_only() -> None:
    fields, problems = _custom("opportunities", 11, [500, 501])
    assert fields["custom:Partner Company"] == {"ids": [500, 501], "names": []}
    assert problems == []


@pytest.mark.parametrize("def_id", [1, 4, 6, 7, 8, 9, 10, 11])
def test_unset_custom_value_stays_none(def_id: int) -> None:
    fields, problems = _custom("people", def_id, None)
    assert next(v for k, v in fields.items() if k.startswith("custom:")) is None
    assert problems == []


@pytest.mark.parametrize(
    ("seconds", "meaning"),
    [
        (JAN_1_2024 - 2 * 3600, "local midnight at UTC+2"),
        (JAN_1_2024 + 8 * 3600, "local midnight at UTC-8"),
    ],
)
def test_date_field_is_the_nearest_midnight(seconds: int, meaning: str) -> None:
    fields, _ = _custom("companies", 8, seconds)
    assert fields["custom:Next Renewal"] == "2024-01-01", meaning


def test_unknown_definition_kept_by_id_with_a_problem() -> None:
    fields, problems = _custom("people", 999, "x")
    assert fields["custom:999"] == "x"
    assert [p.field for p in problems] == ["custom:999"]


def test_unknown_options_reported_not_raised() -> None:
    fields, problems = _custom("people", 9, 12345)
    assert fields["custom:Plan"] is None
    fields, more = _custom("people", 10, [100, 12345])
    assert fields["custom:Interests"] == ["Security"]
    assert [p.field for p in problems + more] == ["custom:Plan", "custom:Interests"]


def test_bad_custom_date_reported() -> None:
    fields, problems = _custom("companies", 8, "next week")
    assert fields["custom:Next Renewal"] is None
    assert problems and "Unix seconds" in problems[0].message


# -- close_date ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "fmt", "expected"),
    [
        ("1/14/2024", "M/D/YYYY", "2024-01-14"),
        ("14/1/2024", "D/M/YYYY", "2024-01-14"),
        ("3/4/2024", "M/D/YYYY", "2024-03-04"),
        ("3/4/2024", "D/M/YYYY", "2024-04-03"),
        ("03/04/2024", "M/D/YYYY", "2024-03-04"),
        ("2024-01-14", "D/M/YYYY", "2024-01-14"),
        (None, "M/D/YYYY", None),
        ("", "M/D/YYYY", None),
    ],
)
def test_close_date_parsed_per_locale(text: str | None, fmt: str, expected: str | None) -> None:
    fields, problems = _resolve("opportunities", {"close_date": text}, close_date_format=fmt)
    assert fields["close_date"] == expected
    assert problems == []


@pytest.mark.parametrize("text", ["14/1/2024", "2/30/2024", "soon", "2024/01/14", "1/14/24"])
def test_malformed_close_date_is_none_and_reported(text: str) -> None:
    fields, problems = _resolve("opportunities", {"close_date": text})
    assert fields["close_date"] is None
    assert [p.field for p in problems] == ["close_date"]
    assert text in problems[0].message


@given(st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2200, 12, 31)))
def test_close_date_round_trips_in_both_locales(day: dt.date) -> None:
    assert parse_close_date(f"{day.month}/{day.day}/{day.year}", "M/D/YYYY") == day.isoformat()
    assert parse_close_date(f"{day.day}/{day.month}/{day.year}", "D/M/YYYY") == day.isoformat()


# -- standard and derived fields -------------------------------------------------------------
def test_lead_fields() -> None:
    lead = {
        "name": "Ada",
        "email": {"email": "ada@example.com", "category": "work"},
        "status": None,
        "status_id": 30,
        "customer_source_id": 40,
        "assignee_id": 70,
        "phone_numbers": [{"number": "+1 555", "category": "work"}],
        "address": {"street": "1 Main", "city": "SF", "state": "CA", "postal_code": "94105"},
    }
    fields, problems = _resolve("leads", lead)
    assert fields["primary_email"] == "ada@example.com"
    assert fields["status"] == "New"
    assert fields["customer_source"] == "Webinar"
    assert fields["assignee_email"] == "sam@example.com"
    assert fields["phone"] == "+1 555"
    assert fields["address_postal_code"] == "94105"
    assert fields["address_country"] is None
    assert fields["name"] == "Ada"
    assert problems == []


def test_lead_status_label_wins_and_null_email() -> None:
    fields, _ = _resolve("leads", {"email": None, "status": "Junk", "status_id": 30})
    assert fields["status"] == "Junk"
    assert fields["primary_email"] is None


@pytest.mark.parametrize(
    ("emails", "expected"),
    [
        ([{"email": "a@x.com", "category": "work"}, {"email": "b@x.com"}], "a@x.com"),
        ([], None),
        (None, None),
    ],
)
def test_person_primary_email_is_the_first(emails: Any, expected: str | None) -> None:
    fields, _ = _resolve("people", {"emails": emails, "contact_type_id": 50, "address": None})
    assert fields["primary_email"] == expected
    assert fields["contact_type"] == "Customer"
    assert fields["address_city"] is None


def test_opportunity_lookups_and_unknown_ids() -> None:
    opportunity = {
        "pipeline_id": 20,
        "pipeline_stage_id": 21,
        "loss_reason_id": 60,
        "customer_source_id": None,
        "assignee_id": 71,
    }
    fields, problems = _resolve("opportunities", opportunity)
    assert (fields["pipeline"], fields["pipeline_stage"], fields["loss_reason"]) == (
        "Sales",
        "Qualified",
        "Price",
    )
    assert fields["customer_source"] is None
    assert fields["assignee_email"] is None
    assert [str(p) for p in problems] == ["assignee_email: unknown assignee_id 71"]


def test_activity_fields() -> None:
    activity = {
        "parent": {"id": 5, "type": "person"},
        "type": {"id": 0, "category": "user"},
        "details": "They&#x27;re keen &amp; ready",
        "user_id": 70,
        "activity_date": JAN_1_2024,
    }
    fields, problems = _resolve("activities", activity)
    assert fields["type_name"] == "Note"
    assert (fields["type_id"], fields["type_category"]) == (0, "user")
    assert (fields["parent_type"], fields["parent_id"]) == ("person", 5)
    assert fields["details"] == "They're keen & ready"
    assert fields["user_email"] == "sam@example.com"
    assert problems == []


def test_activity_type_ids_are_per_category() -> None:
    fields, problems = _resolve("activities", {"type": {"id": 0, "category": "system"}})
    assert fields["type_name"] is None
    assert [p.field for p in problems] == ["type_name"]


def test_field_value_resolution() -> None:
    company = {
        "name": "Acme",
        "custom_fields": [
            {"custom_field_definition_id": 13, "value": "ph-1"},
            {"custom_field_definition_id": 6, "value": None},
        ],
    }
    fields, _ = _resolve("companies", company)
    assert field_value(fields, "name") == "Acme"
    assert field_value(fields, "assignee_planhat_id") == "ph-1"
    assert field_value(fields, "custom:assignee_planhat_id") == "ph-1"
    assert field_value(fields, "custom:ARR") is None
    assert field_value(fields, "ARR") is None
    assert field_value(fields, "custom:Account ID") is MISSING
    assert field_value(fields, "title") is MISSING


# -- the frame -------------------------------------------------------------------------------
FETCHED = dt.datetime(2024, 6, 1, 12, tzinfo=UTC)


def _frame(name: str, records: list[dict], **kw: Any) -> pd.DataFrame:
    return records_frame(
        name,
        records,
        METADATA,
        fetched_at=FETCHED,
        partition_start=dt.date(2024, 1, 1),
        **kw,
    )


@pytest.mark.parametrize("name", list(COPPER_OBJECTS))
def test_empty_frame_is_typed(name: str) -> None:
    frame = _frame(name, [])
    assert len(frame) == 0
    assert {c: str(t) for c, t in frame.dtypes.items()} == {
        c: str(pd.Series(dtype=t).dtype) for c, t in frame_dtypes(name).items()
    }
    con = duckdb.connect()
    columns = ", ".join(f'"{c}" {t}' for c, t in duckdb_types(name).items())
    con.execute(f"create table t ({columns})")
    con.execute("insert into t select * from frame")
    described = {row[0]: row[1] for row in con.execute("describe t").fetchall()}
    assert described["partition_date"] == "DATE"
    assert described["id"] == "BIGINT"


def test_frame_rows_dedupe_and_partitions() -> None:
    leads = [
        {"id": 1, "name": "old", "email": None, "date_created": 1, "date_modified": JAN_1_2024 + 5},
        {"id": 2, "name": "before start", "date_created": 1, "date_modified": JAN_1_2024 - 999},
        {"id": 1, "name": "new", "date_created": 1, "date_modified": JAN_1_2024 + 86_400},
        {"id": 1, "name": "stale", "date_created": 1, "date_modified": JAN_1_2024},
        {"id": 3, "name": "no date", "monetary_value": "12.5"},
    ]
    frame = _frame("leads", leads).set_index("id")
    assert list(frame.index) == [2, 1, 3]
    assert frame.loc[1, "name"] == "new"
    assert frame.loc[1, "partition_date"] == dt.date(2024, 1, 2)
    assert frame.loc[2, "partition_date"] == dt.date(2024, 1, 1)
    assert frame.loc[3, "partition_date"] == dt.date(2024, 1, 1)
    assert pd.isna(frame.loc[3, "date_modified"])
    assert frame.loc[3, "monetary_value"] == 12.5
    assert frame.loc[1, "date_modified"] == pd.Timestamp("2024-01-02", tz="UTC")
    assert json.loads(frame.loc[1, "record"])["name"] == "new"
    assert frame.loc[1, "_fetched_at"] == pd.Timestamp(FETCHED)
    con = duckdb.connect()
    con.execute("create table t as select * from frame")
    described = {row[0]: row[1] for row in con.execute("describe t").fetchall()}
    assert described["partition_date"] == "DATE"
    assert described["date_modified"] == "TIMESTAMP WITH TIME ZONE"


def test_frame_object_columns_and_problems() -> None:
    opportunities = [
        {
            "id": 7,
            "name": "Deal",
            "company_id": 500,
            "primary_contact_id": None,
            "status": "Open",
            "monetary_value": 1000,
            "close_date": "31/31/2024",
            "date_modified": JAN_1_2024,
            "custom_fields": [{"custom_field_definition_id": 9, "value": 90}],
        }
    ]
    frame = _frame("opportunities", opportunities, opportunity_type_field="custom:Plan")
    row = frame.iloc[0]
    assert row["opportunity_type"] == "Pro"
    assert row["company_id"] == 500
    assert pd.isna(row["primary_contact_id"])
    assert json.loads(row["problems"]) == ["close_date: '31/31/2024' is not a valid M/D/YYYY date"]
    assert json.loads(row["fields"])["close_date"] is None
    assert str(frame.dtypes["company_id"]) == "Int64"


def test_activity_frame_columns() -> None:
    activity = {
        "id": 6_300_000_001,
        "parent": {"id": 5, "type": "lead"},
        "type": {"id": 0, "category": "user"},
        "activity_date": JAN_1_2024 + 3600,
        "date_created": JAN_1_2024,
        "date_modified": JAN_1_2024 + 3600,
    }
    row = _frame("activities", [activity]).iloc[0]
    assert row["id"] == 6_300_000_001
    assert (row["parent_type"], row["parent_id"], row["type_name"]) == ("lead", 5, "Note")
    assert row["activity_date"] == pd.Timestamp(JAN_1_2024 + 3600, unit="s", tz="UTC")


def test_deleted_activity_stubs_and_their_ids_leave_the_frame() -> None:
    kept = {"id": 1, "type": {"id": 0, "category": "user"}, "activity_date": JAN_1_2024}
    older = {"id": 2, "type": {"id": 0, "category": "user"}, "activity_date": JAN_1_2024}
    stub = {"id": 2, "is_deleted": True}
    frame = _frame("activities", [kept, older, stub])
    assert list(frame["id"]) == [1]


def test_leads_carry_their_conversion_as_typed_columns() -> None:
    converted = {"id": 7, "date_modified": JAN_1_2024, "converted_contact_id": 70,
                 "converted_at": JAN_1_2024 + 60}  # fmt: skip
    plain = {"id": 8, "date_modified": JAN_1_2024, "converted_contact_id": None,
             "converted_at": None}  # fmt: skip
    frame = _frame("leads", [converted, plain]).set_index("id")
    assert frame.loc[7, "converted_contact_id"] == 70
    assert frame.loc[7, "converted_at"] == pd.Timestamp(JAN_1_2024 + 60, unit="s", tz="UTC")
    assert pd.isna(frame.loc[8, "converted_contact_id"]) and pd.isna(frame.loc[8, "converted_at"])


def test_connect_targets_name_the_records_to_look_up() -> None:
    records = [
        {"id": 1, "custom_fields": [{"custom_field_definition_id": 11, "value": [500, 501]}]},
        {"id": 2, "custom_fields": [{"custom_field_definition_id": 11, "value": [{"id": 502}]}]},
        {"id": 3, "custom_fields": [{"custom_field_definition_id": 11, "value": []}]},
        {"id": 4, "custom_fields": [{"custom_field_definition_id": 5, "value": 10}]},
    ]
    assert connect_targets("opportunities", records, METADATA) == {"company": {500, 501, 502}}
    assert connect_targets("people", records, METADATA) == {}


def test_row_texts_are_utf8_json_with_every_digit() -> None:
    """Rows are written as UTF-8 JSON (as Copper sends them); integers keep every digit."""
    leads = [
        {"id": 1, "name": "Zoë Ångström → 王芳", "monetary_value": "NaN", "date_modified": 5},
        {"id": 2, "name": "big", "custom_fields": [], "date_modified": 6, "n": 2**70},
    ]
    frame = _frame("leads", leads).set_index("id")
    assert "Zoë Ångström → 王芳" in frame.loc[1, "record"]
    fields = json.loads(frame.loc[1, "fields"])
    assert fields["name"] == "Zoë Ångström → 王芳"
    assert fields["monetary_value"] == "NaN"  # the text as sent; the typed column is NaN
    assert json.loads(frame.loc[2, "record"])["n"] == 2**70
    con = duckdb.connect()
    assert con.execute(
        "select bool_and(json_valid(fields) and json_valid(record)) from frame"
    ).fetchone() == (True,)


def test_escaped_and_utf8_rows_map_to_the_same_values() -> None:
    """A warehouse keeps rows written ASCII-escaped by earlier versions beside UTF-8 ones: the
    mapping's extraction reads both as one value, so the rewrite of such a row by its first
    fetch after the upgrade changes no attribute."""
    fields = JsonFields()
    name = canonical_value(fields.copper_field("name"))
    amount = canonical_value(fields.copper_field("amount"))
    row = {"name": "Zoë → 王芳", "amount": 1e16}
    earlier = json.JSONEncoder(separators=(",", ":"), default=str).encode(row)
    now = _frame("leads", [{"id": 1, "date_modified": 5, **row}])["record"].iloc[0]
    assert earlier != now  # ``1e+16`` and ``1e16``, escaped and not
    con = duckdb.connect()
    con.execute(CANONICAL_SQL)
    rows = con.execute(
        f"select {name}, {amount} from (select {fields.extraction('fields')} from"
        " (values (?), (?)) t(fields))",
        [earlier, now],
    ).fetchall()
    assert rows[0] == rows[1]
    assert json.loads(rows[0][0]) == "Zoë → 王芳"


def test_a_lone_surrogate_leaves_its_row_unreadable_not_the_fetch() -> None:
    """Half an emoji (a truncated text) cannot be UTF-8: the row is written escaped, as before,
    and the mapping skips that one record ("Invalid fields JSON") instead of the fetch failing."""
    leads = [
        {"id": 1, "name": "cut \ud83d", "date_modified": 5},
        {"id": 2, "name": "whole", "date_modified": 6},
    ]
    frame = _frame("leads", leads)
    assert "\\ud83d" in frame.set_index("id").loc[1, "fields"]
    con = duckdb.connect()
    valid = con.execute("select id, json_valid(fields) from frame order by id").fetchall()
    assert valid == [(1, False), (2, True)]


@pytest.mark.parametrize(
    "fetched_at",
    [
        dt.datetime(2024, 6, 1, 14, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        dt.datetime(2024, 6, 1, 12),  # naive: taken as UTC
        FETCHED,
    ],
)
def test_every_row_carries_the_fetch_time_in_utc(fetched_at: dt.datetime) -> None:
    leads = [{"id": i, "name": f"l{i}", "date_modified": JAN_1_2024 + i} for i in range(3)]
    frame = records_frame(
        "leads", leads, METADATA, fetched_at=fetched_at, partition_start=dt.date(2024, 1, 1)
    )
    assert str(frame["_fetched_at"].dtype) == "datetime64[ns, UTC]"
    assert frame["_fetched_at"].tolist() == [pd.Timestamp(FETCHED)] * 3
