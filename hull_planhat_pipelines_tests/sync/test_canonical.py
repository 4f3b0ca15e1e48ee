"""Each JSON form's exact bytes: stored fingerprints and texts were written in them, so a form
that changed would make every record look changed (and be sent again) after an upgrade."""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Callable
from typing import Any

import pytest

from hull_planhat_pipelines.sync.batching import json_size
from hull_planhat_pipelines.sync.canonical import (
    canonical_hash,
    canonical_json,
    content_hash,
    content_json,
    row_json,
    value_json,
    value_text,
    wire_json,
)
from hull_planhat_pipelines.sync.planhat.fingerprints import fields_text, fingerprint

NESTED = {"b": 1.0, "a": "é", "c": [2.0, 2.5, None], "d": {"z": -0.0, "y": True}}
TEXT = "naïve ✓"
INTEGRAL = 1200.0
UNTYPED = [dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC), decimal.Decimal("1.50")]
NULLS = {"n": None, "nested": {"x": None, "k": 3}}
VALUES = [NESTED, TEXT, INTEGRAL, UNTYPED, NULLS]

PINNED: dict[Callable[[Any], str], list[str]] = {
    canonical_json: [
        '{"a": "\\u00e9", "b": 1.0, "c": [2.0, 2.5, null], "d": {"y": true, "z": -0.0}}',
        '"na\\u00efve \\u2713"',
        "1200.0",
        '["2024-05-01 12:30:00+00:00", "1.50"]',
        '{"n": null, "nested": {"k": 3, "x": null}}',
    ],
    canonical_hash: [
        "abbc15228e2e49e7555285576b70cba46ce45c52721735c43f6d153850d9796f",
        "e5429d7f95b237c966ab73d90b818597cef4d37b2d901a9b7c23fdf6c8dc8fe7",
        "41b22f3764e6c0d8b6e7ee4eee224cb822e87bd8befecc1f495fa60711cd8241",
        "fb95ff4fc32db27010785c2f8b1254a85465793d98406a8489ae19268bce49ee",
        "386b0974fbdefe4698051a326ec2c685122e35d3da9dd0908a384b5bba34ca6a",
    ],
    value_json: [
        '{"a":"é","b":1,"c":[2,2.5,null],"d":{"y":true,"z":0}}',
        '"naïve ✓"',
        "1200",
        '["2024-05-01 12:30:00+00:00","1.50"]',
        '{"n":null,"nested":{"k":3,"x":null}}',
    ],
    content_json: [
        '{"a":"é","b":1.0,"c":[2.0,2.5,null],"d":{"y":true,"z":-0.0}}',
        '"naïve ✓"',
        "1200.0",
        '["2024-05-01 12:30:00+00:00","1.50"]',
        '{"n":null,"nested":{"k":3,"x":null}}',
    ],
    content_hash: [
        "4349b45a68b1c5de09fac07c2f8d447561654c26eba5189b23e8ee7c2d305bfb",
        "3bf0e6680f33c0ad33df9e13af6a5e2d8bbe56a12fc6dbdd788ee72f64326e82",
        "41b22f3764e6c0d8b6e7ee4eee224cb822e87bd8befecc1f495fa60711cd8241",
        "cb7bf6029e7199302e61a9a3cde2efcc615144d4566b3cb029aba37d05a82a2b",
        "3b79da1d5cdefde3408b43a369468b6b5eca42c44e80c09754403be037b2db66",
    ],
    wire_json: [
        '{"b":1.0,"a":"\\u00e9","c":[2.0,2.5,null],"d":{"z":-0.0,"y":true}}',
        '"na\\u00efve \\u2713"',
        "1200.0",
        '["2024-05-01 12:30:00+00:00","1.50"]',
        '{"n":null,"nested":{"x":null,"k":3}}',
    ],
    row_json: [
        '{"b":1.0,"a":"é","c":[2.0,2.5,null],"d":{"z":-0.0,"y":true}}',
        '"naïve ✓"',
        "1200.0",
        '["2024-05-01T12:30:00Z","1.50"]',
        '{"n":null,"nested":{"x":null,"k":3}}',
    ],
}


@pytest.mark.parametrize("form", list(PINNED), ids=lambda f: f.__name__)
def test_each_form_writes_exactly_its_pinned_text(form: Callable[[Any], str]) -> None:
    assert [form(v) for v in VALUES] == PINNED[form]


def test_value_text_rewrites_json_text_in_the_value_form() -> None:
    assert value_text('{"b": 2.0, "a": [1.0, "é"]}') == '{"a":[1,"é"],"b":2}'
    assert value_text(None) is None


def test_delivery_fingerprints_leave_nulls_out_and_write_integral_numbers_as_integers() -> None:
    assert fingerprint(NESTED) == (
        "0f96374e785a0c1b893b6847dfa8f6c1fa90bdd58ab05e7d4bc6498bc499e779"
    )
    assert fingerprint(NULLS) == (
        "9c3432323f0dc9f3ad3853724adcf637686a2b243fd66a844a866bd29f1700e6"
    )
    assert fingerprint(NULLS) == content_hash({"nested": {"k": 3}})
    assert fingerprint({"amount": 1200.0, "gone": None}) == fingerprint({"amount": 1200})
    assert fields_text(["b", "a", "é", "a"]) == '["a","b","é"]'


def test_a_batch_is_measured_in_the_wire_form() -> None:
    assert [json_size(v) for v in VALUES] == [65, 19, 6, 36, 36]
    assert all(json_size(v) == len(wire_json(v).encode()) for v in VALUES)
