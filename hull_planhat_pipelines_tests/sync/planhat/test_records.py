"""Planhat's dates in the snapshot frames: parsed with an explicit ISO-8601 format, silently."""

from __future__ import annotations

import datetime as dt
import warnings

import pandas as pd

from hull_planhat_pipelines.sandbox.planhat_store import iso
from hull_planhat_pipelines.sync.planhat.records import companies_frame, endusers_frame

AT = dt.datetime(2026, 11, 20, 9, 0, tzinfo=dt.UTC)


def _utc(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def _frame_quietly(records: list[dict], *, endusers: bool = False) -> pd.DataFrame:
    build = endusers_frame if endusers else companies_frame
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a format guess (or anything else) fails the test
        return build(records, fetched_at=AT)


def test_planhat_dates_parse_to_their_utc_instants() -> None:
    stamps = [iso(dt.datetime(2024, 5, 1, 12, 30, 0, 123000, tzinfo=dt.UTC)), iso(AT)]
    assert stamps == ["2024-05-01T12:30:00.123Z", "2026-11-20T09:00:00.000Z"]
    records = [
        {"_id": f"c{i}", "name": "n", "createdAt": s, "updatedAt": s} for i, s in enumerate(stamps)
    ]
    frame = _frame_quietly(records)
    assert frame["created_at"].tolist() == [
        _utc("2024-05-01 12:30:00.123"),
        _utc("2026-11-20 09:00"),
    ]
    assert frame["updated_at"].tolist() == frame["created_at"].tolist()
    assert str(frame["created_at"].dtype) == "datetime64[ns, UTC]"


def test_every_iso_form_parses_whatever_comes_first_and_anything_else_is_null() -> None:
    """Mixed forms parse one by one: without a format, pandas took the first value's form and
    nulled the others."""
    values = [
        "2024-05-01T12:30:00.123Z",
        "2024-05-01T12:30:00Z",
        "2024-05-01T12:30:00+02:00",
        "2024-05-01T12:30:00.5-01:00",
        "2024-05-01",
        "2024-05-01T12:30:00.123456+00:00",
        None,
        "",
        "not a date",
    ]
    expected = [
        _utc("2024-05-01 12:30:00.123"),
        _utc("2024-05-01 12:30:00"),
        _utc("2024-05-01 10:30:00"),
        _utc("2024-05-01 13:30:00.5"),
        _utc("2024-05-01 00:00:00"),
        _utc("2024-05-01 12:30:00.123456"),
    ]
    for first in range(len(values)):
        order = values[first:] + values[:first]
        records = [{"_id": f"e{i}", "createdAt": v} for i, v in enumerate(order)]
        frame = _frame_quietly(records, endusers=True)
        parsed = dict(zip(order, frame["created_at"], strict=True))
        assert [parsed[v] for v in values[: len(expected)]] == expected
        assert all(pd.isna(parsed[v]) for v in values[len(expected) :])
        assert frame["updated_at"].isna().all()  # no updatedAt: null, not an error
