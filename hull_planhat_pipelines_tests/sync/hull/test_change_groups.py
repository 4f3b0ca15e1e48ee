"""The change log's groups: which part of a profile an apply rewrote."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from hull_planhat_pipelines.sync.hull.change_groups import (
    ANONYMOUS_IDS,
    STRUCTURAL,
    attribute_group,
    changed_groups,
    read_groups,
)


def _profile(hull_id: str, **values: Any) -> dict[str, Any]:
    row = {
        "hull_id": hull_id,
        "email": f"{hull_id}@example.com",
        "external_id": None,
        "anonymous_ids": [f"copper-person:{hull_id}"],
        "account_hull_id": "a1",
        "attributes": "{}",
        "created_at": pd.Timestamp("2026-01-01", tz="UTC"),
        "updated_at": pd.Timestamp("2026-01-02", tz="UTC"),
        "segments": ["Customers"],
    }
    return {**row, **values}


def _upserts(*pairs: tuple[str, str]) -> pd.DataFrame:
    return pd.DataFrame(pairs, columns=["hull_id", "attribute"])


def _groups(before: list[dict], after: list[dict], upserts: pd.DataFrame) -> dict[str, set]:
    frame = changed_groups(pd.DataFrame(before), pd.DataFrame(after), upserts)
    found: dict[str, set] = {}
    for hull_id, group in frame.itertuples(index=False, name=None):
        found.setdefault(hull_id, set()).add(group)
    return found


def test_an_attribute_group_is_the_part_before_the_first_slash() -> None:
    assert attribute_group("copper_person/title") == "copper_person"
    assert attribute_group("planhat/custom/plan") == "planhat"
    assert attribute_group("score") == "score"
    assert read_groups(["copper/name", None, "copper/owner_planhat_id"]) == {"copper", STRUCTURAL}
    assert read_groups([]) == {STRUCTURAL}


def test_attributes_alone_are_logged_by_group_and_the_times_do_not_count() -> None:
    before = [_profile("u1"), _profile("u2")]
    after = [
        _profile("u1", attributes='{"planhat/position": "CTO"}', updated_at=pd.Timestamp.now()),
        _profile("u2", attributes='{"copper_person/title": "CTO", "planhat/position": "CTO"}'),
    ]
    upserts = _upserts(
        ("u1", "planhat/position"),
        ("u2", "copper_person/title"),
        ("u2", "planhat/position"),
        ("u9", "copper_person/title"),  # not rewritten here: not logged
    )
    assert _groups(before, after, upserts) == {
        "u1": {"planhat"},
        "u2": {"copper_person", "planhat"},
    }


def test_identity_links_segments_and_new_profiles_are_structural_anonymous_ids_apart() -> None:
    before = [_profile(h) for h in ("u1", "u2", "u3", "u4", "u5")]
    after = [
        _profile("u1", email="new@example.com"),
        _profile("u2", account_hull_id="a2"),
        _profile("u3", anonymous_ids=["copper-person:u3", "copper-lead:9"]),
        _profile("u4", segments=[]),
        _profile("u5"),  # rewritten with nothing to show for it: counted by everyone
        _profile("u6"),  # new
    ]
    upserts = _upserts(("u1", "planhat/position"), ("u6", "copper_person/title"))
    found = _groups(before, after, upserts)
    assert found == {
        "u1": {"planhat", STRUCTURAL},
        "u2": {STRUCTURAL},
        "u3": {ANONYMOUS_IDS},
        "u4": {STRUCTURAL},
        "u5": {STRUCTURAL},
        "u6": {"copper_person", STRUCTURAL},
    }


def test_missing_values_and_arrays_compare_by_value() -> None:
    before = [_profile("u1", external_id=None, segments=np.array(["Customers"], dtype=object))]
    after = [_profile("u1", external_id=float("nan"), segments=["Customers"])]
    assert _groups(before, after, _upserts(("u1", "copper_person/phone"))) == {
        "u1": {"copper_person"}
    }


def test_stored_profiles_the_apply_did_not_rewrite_are_not_logged() -> None:
    """A slice also holds the untouched users of a touched account: only the rewritten
    profiles are compared, however their stored neighbours differ."""
    before = [
        _profile("u1"),
        _profile("u2", email="old@example.com", anonymous_ids=[]),
        _profile("u3", segments=[]),
    ]
    after = [_profile("u1", attributes='{"copper_person/title": "CTO"}')]
    upserts = _upserts(("u1", "copper_person/title"), ("u2", "copper_person/title"))
    assert _groups(before, after, upserts) == {"u1": {"copper_person"}}


def test_every_kind_of_missing_value_is_the_same_and_a_value_is_not_missing() -> None:
    """Compared as arrays: None, NaN, pandas' NA and NaT are one missing value; a value
    against a missing one, or another value, is a change; a profile stored twice is compared
    with its last row."""
    before = [
        _profile("u1", external_id=pd.NA, email=None),
        _profile("u2", external_id=None),
        _profile("u3", external_id="x1", account_hull_id=float("nan")),
        _profile("u4", external_id="old"),
        _profile("u4", external_id="x4"),
        _profile("u5", anonymous_ids=np.array(["copper-person:u5"], dtype=object)),
        _profile("u6", anonymous_ids=np.array(["copper-person:u6"], dtype=object)),
    ]
    after = [
        _profile("u1", external_id=None, email=float("nan")),
        _profile("u2", external_id="x2"),
        _profile("u3", external_id="x1", account_hull_id=pd.NaT),
        _profile("u4", external_id="x4"),
        _profile("u5"),  # the same ids, as a list
        _profile("u6", anonymous_ids=["copper-person:u6", "copper-lead:6"]),
    ]
    upserts = _upserts(*((h, "copper_person/title") for h in ("u1", "u2", "u3", "u4", "u5")))
    assert _groups(before, after, upserts) == {
        "u1": {"copper_person"},
        "u2": {"copper_person", STRUCTURAL},
        "u3": {"copper_person"},
        "u4": {"copper_person"},
        "u5": {"copper_person"},
        "u6": {ANONYMOUS_IDS},
    }
