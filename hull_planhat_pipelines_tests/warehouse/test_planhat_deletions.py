"""A record deleted in Planhat detaches from its profile, as a record deleted in Copper does:
its ``planhat/`` group is cleared and ``planhat/deleted_at`` set, the profile and its ids stay.
Planhat cannot say what it deleted and a listing by offset can miss a record, so a record is
deleted when two snapshots in a row lack it; one miss changes nothing on the profile."""

from __future__ import annotations

from pathlib import Path

from hull_planhat_pipelines.sync.planhat.records import endusers_frame
from hull_planhat_pipelines.warehouse.planhat_snapshots import gone_table, write_snapshot
from hull_planhat_pipelines_tests.backsync_support import OTHER, T0, Warehouse

ACME = {"_id": "c1", "name": "Acme", "externalId": "x1", "phase": "onboarding"}
ANN = {"_id": "e1", "email": "ann@x.io", "firstName": "Ann", "position": "CTO", "companyId": "c2"}
BOB = {"_id": "e2", "email": "bob@x.io", "firstName": "Bob", "companyId": "c2"}


def _planhat(attributes: dict) -> dict:
    return {k: v for k, v in attributes.items() if k.startswith("planhat/")}


def test_an_enduser_absent_twice_detaches_and_comes_back_whole(tmp_path: Path) -> None:
    warehouse = Warehouse(tmp_path / "w.duckdb")
    warehouse.cycle(ACME, OTHER, endusers=[ANN, BOB])
    before = warehouse.user("ann@x.io")

    # one listing missed it: nothing changes on the profile
    changes = warehouse.cycle(ACME, OTHER, endusers=[BOB])
    assert warehouse.user("ann@x.io") == before
    assert changes.deleted.empty

    # absent again: deleted in Planhat; the group goes, the profile and its ids stay
    changes = warehouse.cycle(ACME, OTHER, endusers=[BOB])
    ann = warehouse.user("ann@x.io")
    assert _planhat(ann["attributes"]) == {"planhat/deleted_at": T0.replace(minute=15).isoformat()}
    assert ann["anonymous_ids"] == ["planhat:e1"]
    assert changes.deleted[["source_object", "source_id"]].values.tolist() == [
        ["planhat_enduser", "e1"]
    ]
    assert [(e.event, e.object_id) for e in changes.log if e.event.endswith(".deleted")] == [
        ("incoming.user.deleted", "e1")
    ]
    assert warehouse.user("bob@x.io")["attributes"]["planhat/first_name"] == "Bob"
    # detached once: the next snapshot without it changes nothing
    assert warehouse.query(f"select count(*) from {gone_table('endusers')}") == [(0,)]
    assert warehouse.cycle(ACME, OTHER, endusers=[BOB]).is_empty

    # restored in Planhat: it writes its whole group again and the mark goes
    warehouse.cycle(ACME, OTHER, endusers=[ANN, BOB])
    assert _planhat(warehouse.user("ann@x.io")["attributes"]) == _planhat(before["attributes"])


def test_a_second_snapshot_without_the_record_is_not_unchanged_for_hull(tmp_path: Path) -> None:
    """The list is the same as the one before, but Hull has a profile to detach: the snapshot
    must not read as unchanged (that starts no Hull run)."""
    warehouse = Warehouse(tmp_path / "w.duckdb")
    warehouse.cycle(ACME, OTHER, endusers=[ANN, BOB])
    warehouse.cycle(ACME, OTHER, endusers=[BOB])
    stored = write_snapshot(
        warehouse.path, "endusers", endusers_frame([BOB], fetched_at=T0), T0.replace(hour=12)
    )
    assert stored.changed == 1


def test_a_company_absent_twice_detaches_and_keeps_its_users(tmp_path: Path) -> None:
    warehouse = Warehouse(tmp_path / "w.duckdb")
    ann = {**ANN, "companyId": "c1"}
    warehouse.cycle(ACME, OTHER, endusers=[ann])
    for _ in range(2):
        warehouse.cycle(OTHER, endusers=[ann])
    attributes = warehouse.attributes("c1")
    assert set(_planhat(attributes)) == {"planhat/deleted_at"}
    [(linked,)] = warehouse.query(
        "select u.account_hull_id = a.hull_id from hull.users u, hull.accounts a"
        " where u.email = 'ann@x.io' and list_contains(a.anonymous_ids, 'planhat:c1')"
    )
    assert linked


def test_a_profile_holding_another_living_enduser_keeps_its_group(tmp_path: Path) -> None:
    """Two endusers with one email (in two companies) are one profile: one deleted, the other
    still writes the group."""
    warehouse = Warehouse(tmp_path / "w.duckdb")
    twin = {**ANN, "_id": "e3", "companyId": "c1"}
    warehouse.cycle(ACME, OTHER, endusers=[ANN, twin])
    for _ in range(2):
        changes = warehouse.cycle(ACME, OTHER, endusers=[twin])
    assert changes.deleted.empty
    attributes = warehouse.user("ann@x.io")["attributes"]
    assert attributes["planhat/position"] == "CTO"
    assert "planhat/deleted_at" not in attributes


def test_a_company_recreated_as_its_deletion_is_judged_holds_the_new_ones_group(
    tmp_path: Path,
) -> None:
    """A company deleted in Planhat is recreated by the next delivery (a new ``_id``, the same
    external id): the snapshot that judges the old one deleted lists the new one, which lands
    on the same account and writes the group; no ``deleted_at`` stays beside it."""
    warehouse = Warehouse(tmp_path / "w.duckdb")
    warehouse.cycle(ACME, OTHER)
    warehouse.cycle(OTHER)
    recreated = {**ACME, "_id": "c9", "phase": "renewal"}
    warehouse.cycle(recreated, OTHER)
    attributes = warehouse.attributes("c9")
    assert attributes == warehouse.attributes("c1")  # one account
    assert _planhat(attributes)["planhat/phase"] == "renewal"
    assert "planhat/deleted_at" not in attributes
