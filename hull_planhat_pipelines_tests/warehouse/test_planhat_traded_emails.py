"""A Planhat record whose identity changed writes its whole ``planhat/`` group on the profile
it resolves to: two endusers trading emails in one snapshot each land, by email, on the
profile the other one wrote, and that profile must then hold the newcomer's fields only,
not a blend of both endusers."""

from __future__ import annotations

from pathlib import Path

from hull_planhat_pipelines_tests.backsync_support import OTHER, Warehouse

ANN = {"_id": "e1", "email": "ann@x.io", "firstName": "Ann", "position": "CTO", "companyId": "c2"}
BOB = {"_id": "e2", "email": "bob@x.io", "firstName": "Bob", "lastName": "Smith", "companyId": "c2"}


def test_two_endusers_trading_emails_leave_no_blend_of_their_fields(tmp_path: Path) -> None:
    warehouse = Warehouse(tmp_path / "w.duckdb")
    warehouse.cycle(OTHER, endusers=[ANN, BOB])
    assert warehouse.user("ann@x.io")["attributes"]["planhat/position"] == "CTO"
    assert warehouse.user("bob@x.io")["attributes"]["planhat/last_name"] == "Smith"

    # in one edit, each enduser takes the other's email
    warehouse.cycle(OTHER, endusers=[{**ANN, "email": "bob@x.io"}, {**BOB, "email": "ann@x.io"}])
    bob = warehouse.user("bob@x.io")
    ann = warehouse.user("ann@x.io")
    planhat = {"planhat/first_name", "planhat/last_name", "planhat/position"}
    # identity by email: the profile holding bob@x.io now carries enduser e1's fields, whole
    assert {k: v for k, v in bob["attributes"].items() if k in planhat} == {
        "planhat/first_name": "Ann",
        "planhat/position": "CTO",
    }
    assert {k: v for k, v in ann["attributes"].items() if k in planhat} == {
        "planhat/first_name": "Bob",
        "planhat/last_name": "Smith",
    }
    # each profile keeps its own anonymous id: an id is never moved to another strong profile
    assert bob["anonymous_ids"] == ["planhat:e2"]
    assert ann["anonymous_ids"] == ["planhat:e1"]


def test_an_enduser_whose_email_changed_to_a_new_one_keeps_its_fields(tmp_path: Path) -> None:
    warehouse = Warehouse(tmp_path / "w.duckdb")
    warehouse.cycle(OTHER, endusers=[ANN])
    warehouse.cycle(OTHER, endusers=[{**ANN, "email": "ann@y.io"}])
    # its own key resolves it; the group is written whole, and it holds what it held
    attributes = warehouse.user("ann@y.io")["attributes"]
    assert attributes["planhat/first_name"] == "Ann"
    assert attributes["planhat/position"] == "CTO"
