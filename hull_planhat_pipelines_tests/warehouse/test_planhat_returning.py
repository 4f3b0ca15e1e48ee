"""A Planhat record one snapshot missed (a listing by offset can shift past a record when
another is deleted mid-listing; an archived enduser can be restored) is compared, when it is
listed again, with the row Hull last applied: a field cleared in Planhat meanwhile is cleared
on the profile, as it is for a record every snapshot lists."""

from __future__ import annotations

from pathlib import Path

import pytest

from hull_planhat_pipelines.warehouse.planhat_snapshots import gone_table
from hull_planhat_pipelines_tests.backsync_support import OTHER, Warehouse


@pytest.mark.parametrize("missed", [False, True])
def test_a_field_cleared_in_planhat_is_cleared_whether_or_not_a_snapshot_missed_it(
    tmp_path: Path, missed: bool
) -> None:
    warehouse = Warehouse(tmp_path / "w.duckdb")
    acme = {"_id": "c1", "name": "Acme", "externalId": "x1"}
    warehouse.cycle({**acme, "phase": "onboarding"}, OTHER)
    assert warehouse.attributes("c1")["planhat/phase"] == "onboarding"
    if missed:  # the listing shifted past it
        warehouse.cycle(OTHER)
        assert warehouse.query(f"select _id from {gone_table('companies')}") == [("c1",)]
    warehouse.cycle(acme, OTHER)  # listed again, its phase cleared in Planhat meanwhile
    attributes = warehouse.attributes("c1")
    assert "planhat/phase" not in attributes
    assert attributes["planhat/name"] == "Acme"
    # listed again, it has left the records gone: a later miss keeps its newest row
    assert warehouse.query("select count(*) from ops.hull_planhat_companies where _id = 'c1'") == [
        (1,)
    ]
    if missed:
        assert warehouse.query(f"select count(*) from {gone_table('companies')}") == [(0,)]


def test_a_field_cleared_while_an_enduser_was_skipped_is_cleared_once_it_is_fixed(
    tmp_path: Path,
) -> None:
    """An enduser skipped for an invalid email is not applied: Hull's copy keeps what it last
    applied, so it is skipped (and logged) at each snapshot until fixed, then compared with
    that row."""
    warehouse = Warehouse(tmp_path / "w.duckdb")
    ann = {"_id": "e1", "email": "ann@x.io", "firstName": "Ann", "companyId": "c2"}
    warehouse.cycle(OTHER, endusers=[{**ann, "position": "CTO"}])
    assert warehouse.attributes("e1", "users")["planhat/position"] == "CTO"
    for _ in range(2):  # a typo in the email, the position cleared in the same edit
        changes = warehouse.cycle(OTHER, endusers=[{**ann, "email": "ann@x"}])
        assert [(e.event, e.object_id, e.reason) for e in changes.log if e.object_id == "e1"] == [
            ("incoming.user.skip", "e1", "Invalid email")
        ]
    warehouse.cycle(OTHER, endusers=[ann])  # the email fixed
    attributes = warehouse.attributes("e1", "users")
    assert "planhat/position" not in attributes
    assert attributes["planhat/first_name"] == "Ann"
