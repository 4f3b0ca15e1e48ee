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


def test_after_a_trade_of_emails_the_deletion_detaches_the_group_the_record_wrote(
    tmp_path: Path,
) -> None:
    """After two endusers traded emails, each one's group is on the profile holding the other's
    anonymous id: ``planhat/id`` names the writer, and a deletion detaches that profile."""
    warehouse = Warehouse(tmp_path / "w.duckdb")
    warehouse.cycle(OTHER, endusers=[ANN, BOB])
    bob = {**BOB, "email": "ann@x.io"}
    warehouse.cycle(OTHER, endusers=[{**ANN, "email": "bob@x.io"}, bob])
    assert warehouse.user("bob@x.io")["attributes"]["planhat/id"] == "e1"
    for _ in range(2):  # e1 deleted
        changes = warehouse.cycle(OTHER, endusers=[bob])
    assert changes.deleted[["hull_id", "source_id"]].values.tolist() == [
        [warehouse.user_id("bob@x.io"), "e1"]
    ]
    assert set(_planhat(warehouse.user("bob@x.io")["attributes"])) == {"planhat/deleted_at"}
    living = _planhat(warehouse.user("ann@x.io")["attributes"])
    assert living == {"planhat/first_name": "Bob", "planhat/id": "e2"}


def test_twins_keep_the_living_ones_group_whichever_goes_first(tmp_path: Path) -> None:
    """Two endusers with one email (in two companies) are one profile, and one of them writes
    its group: deleted, the living one is handed over again and writes it whole (no mark);
    once both are gone, the profile detaches."""
    warehouse = Warehouse(tmp_path / "w.duckdb")
    twin = {**ANN, "_id": "e3", "companyId": "c1", "position": "CEO"}
    warehouse.cycle(ACME, OTHER, endusers=[ANN, twin, BOB])
    writer = warehouse.user("ann@x.io")["attributes"]["planhat/id"]
    first, second = (twin, ANN) if writer == "e3" else (ANN, twin)
    for _ in range(2):  # the writer goes first
        warehouse.cycle(ACME, OTHER, endusers=[second, BOB])
    attributes = _planhat(warehouse.user("ann@x.io")["attributes"])
    assert attributes["planhat/id"] == second["_id"]
    assert attributes["planhat/position"] == second["position"]
    assert "planhat/deleted_at" not in attributes
    for _ in range(2):  # then the other
        changes = warehouse.cycle(ACME, OTHER, endusers=[BOB])
    assert changes.deleted["source_id"].tolist() == [second["_id"]]
    assert set(_planhat(warehouse.user("ann@x.io")["attributes"])) == {"planhat/deleted_at"}
    assert first["_id"] != second["_id"]


def test_a_company_recreated_then_deleted_again_detaches_again(tmp_path: Path) -> None:
    """The account holds the first company's anonymous id for good; the recreated one wrote
    the group, and its deletion detaches it."""
    warehouse = Warehouse(tmp_path / "w.duckdb")
    warehouse.cycle(ACME, OTHER)
    for _ in range(2):
        warehouse.cycle(OTHER)
    warehouse.cycle({**ACME, "_id": "c9", "phase": "renewal"}, OTHER)
    assert "planhat/deleted_at" not in warehouse.attributes("c9")
    for _ in range(2):
        changes = warehouse.cycle(OTHER)
    assert changes.deleted["source_id"].tolist() == ["c9"]
    assert set(_planhat(warehouse.attributes("c9"))) == {"planhat/deleted_at"}


def test_a_record_skipped_while_listed_again_is_not_deleted_by_one_miss(tmp_path: Path) -> None:
    """Missed once, then listed with an invalid email (skipped, not applied): it is listed, so
    one more miss is a first miss again."""
    warehouse = Warehouse(tmp_path / "w.duckdb")
    warehouse.cycle(OTHER, endusers=[ANN, BOB])
    warehouse.cycle(OTHER, endusers=[BOB])
    warehouse.cycle(OTHER, endusers=[{**ANN, "email": "not-an-email"}, BOB])
    assert warehouse.query(f"select count(*) from {gone_table('endusers')}") == [(0,)]
    assert warehouse.cycle(OTHER, endusers=[BOB]).deleted.empty
    assert warehouse.user("ann@x.io")["attributes"]["planhat/position"] == "CTO"


def test_a_planhat_detach_is_logged_and_undone_as_planhats(tmp_path: Path) -> None:
    warehouse = Warehouse(tmp_path / "w.duckdb")
    warehouse.cycle(OTHER, endusers=[ANN, BOB])
    warehouse.cycle(OTHER, endusers=[BOB])
    changes = warehouse.cycle(OTHER, endusers=[BOB])
    [reason] = [e.reason for e in changes.log if e.event == "incoming.user.deleted"]
    assert reason.startswith("Deleted in Planhat")
    upserts = warehouse.cycle(OTHER, endusers=[ANN, BOB]).user_upserts
    restored = upserts[upserts["attribute"] == "planhat/deleted_at"]
    assert restored["source_object"].tolist() == ["planhat_enduser"]


def test_a_twin_listed_again_as_its_writer_is_judged_deleted_writes_the_group(
    tmp_path: Path,
) -> None:
    """Both twins missed once, then the living one listed again in the snapshot that judges
    the writer deleted: compared with the row it went with it would be unchanged, so it is
    handed over with no previous version and writes the group whole."""
    warehouse = Warehouse(tmp_path / "w.duckdb")
    twin = {**ANN, "_id": "e3", "companyId": "c1", "firstName": "Annie", "position": "CEO"}
    warehouse.cycle(ACME, OTHER, endusers=[twin, BOB])
    warehouse.cycle(ACME, OTHER, endusers=[ANN, twin, BOB])  # e1 is new: it writes the group
    assert warehouse.user("ann@x.io")["attributes"]["planhat/id"] == "e1"
    warehouse.cycle(ACME, OTHER, endusers=[BOB])  # both missed once
    warehouse.cycle(ACME, OTHER, endusers=[twin, BOB])  # e1 deleted, e3 back
    attributes = _planhat(warehouse.user("ann@x.io")["attributes"])
    assert attributes == {
        "planhat/first_name": "Annie",
        "planhat/position": "CEO",
        "planhat/id": "e3",
    }


def test_after_a_trade_the_living_writer_is_found_by_its_email(tmp_path: Path) -> None:
    """After a trade, the profile holding e1's anonymous id is where e2 (by email) belongs; a
    third enduser with that email writes it, then is deleted: e2 writes the group again."""
    warehouse = Warehouse(tmp_path / "w.duckdb")
    warehouse.cycle(OTHER, endusers=[ANN, BOB])
    traded = [{**ANN, "email": "bob@x.io"}, {**BOB, "email": "ann@x.io"}]
    warehouse.cycle(OTHER, endusers=traded)
    third = {"_id": "e4", "email": "ann@x.io", "firstName": "Tess", "companyId": "c2"}
    warehouse.cycle(OTHER, endusers=[*traded, third])
    assert warehouse.user("ann@x.io")["attributes"]["planhat/id"] == "e4"
    for _ in range(2):
        warehouse.cycle(OTHER, endusers=traded)
    attributes = _planhat(warehouse.user("ann@x.io")["attributes"])
    assert attributes == {"planhat/first_name": "Bob", "planhat/id": "e2"}


def _twins_written_by_e1(warehouse: Warehouse) -> dict:
    twin = {**ANN, "_id": "e3", "companyId": "c1", "firstName": "Annie", "position": "CEO"}
    warehouse.cycle(ACME, OTHER, endusers=[twin, BOB])
    warehouse.cycle(ACME, OTHER, endusers=[ANN, twin, BOB])  # e1 is new: it writes the group
    assert warehouse.user("ann@x.io")["attributes"]["planhat/id"] == "e1"
    return twin


def test_a_twin_missed_as_its_writer_is_judged_deleted_writes_the_group_once_back(
    tmp_path: Path,
) -> None:
    warehouse = Warehouse(tmp_path / "w.duckdb")
    twin = _twins_written_by_e1(warehouse)
    warehouse.cycle(ACME, OTHER, endusers=[twin, BOB])  # e1 missed once
    warehouse.cycle(ACME, OTHER, endusers=[BOB])  # e1 deleted; e3 missed (kept for later)
    assert set(_planhat(warehouse.user("ann@x.io")["attributes"])) == {"planhat/deleted_at"}
    warehouse.cycle(ACME, OTHER, endusers=[twin, BOB])  # e3 back, as it went
    attributes = _planhat(warehouse.user("ann@x.io")["attributes"])
    assert attributes == {
        "planhat/first_name": "Annie",
        "planhat/position": "CEO",
        "planhat/id": "e3",
    }
    assert warehouse.query("select count(*) from ops.hull_planhat_endusers_restage") == [(0,)]


def test_a_twin_skipped_as_its_writer_is_judged_deleted_writes_the_group_once_fixed(
    tmp_path: Path,
) -> None:
    warehouse = Warehouse(tmp_path / "w.duckdb")
    twin = _twins_written_by_e1(warehouse)
    broken = {**twin, "email": "ann@x"}  # an invalid email: skipped, not applied
    warehouse.cycle(ACME, OTHER, endusers=[broken, BOB])  # e1 missed once
    warehouse.cycle(ACME, OTHER, endusers=[broken, BOB])  # e1 deleted; e3 skipped
    warehouse.cycle(ACME, OTHER, endusers=[twin, BOB])  # e3 fixed
    attributes = _planhat(warehouse.user("ann@x.io")["attributes"])
    assert attributes == {
        "planhat/first_name": "Annie",
        "planhat/position": "CEO",
        "planhat/id": "e3",
    }
