"""Planhat snapshots kept as history in one unpartitioned table, and what the UI shows of
every asset: unique labels, kinds, no unfillable partitions, a column schema on every table."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest

from hull_planhat_pipelines.definitions import build_definitions
from hull_planhat_pipelines.orchestration import (
    SNAPSHOT_KEYS,
    build_planhat_fetch_sensor,
    planhat_fetch_job,
)
from hull_planhat_pipelines.settings import load_settings
from hull_planhat_pipelines.sync.planhat.records import companies_frame
from hull_planhat_pipelines.warehouse.deliveries import unseen_by_snapshot
from hull_planhat_pipelines.warehouse.planhat_snapshots import (
    applied_table,
    diff_snapshot,
    diff_table,
    remember_snapshot,
    store_difference,
    store_snapshot,
    write_snapshot,
)
from hull_planhat_pipelines_tests.assets.test_outgoing_assets import Stack, _started

T0 = dt.datetime(2026, 11, 20, 9, 0, tzinfo=dt.UTC)


def _company(_id: str, name: str) -> dict[str, str]:
    return {"_id": _id, "name": name, "externalId": f"ext-{_id}"}


def _take(
    conn: duckdb.DuckDBPyConnection, at: dt.datetime, *companies: dict, stored: bool = False
) -> int:
    """Store a snapshot; with ``stored``, also its difference from Hull's copy, as the
    snapshot asset does (without, Hull compares in full: a warehouse from before)."""
    run = conn.execute
    run("begin transaction")
    kept = store_snapshot(conn, "companies", companies_frame(list(companies), fetched_at=at), at)
    if stored:
        store_difference(conn, "companies", pd.Timestamp(at))
    run("commit")
    return kept


def _apply(conn: duckdb.DuckDBPyConnection, mark: pd.Timestamp | None) -> tuple[set, set, object]:
    """What Hull would be handed (changed ``_id``s, previous ``_id``s), then remembered."""
    diff = diff_snapshot(conn, "companies", mark)
    if diff is None:
        return set(), set(), None
    changed = set(diff.changed["_id"]) if diff.changed is not None else set()
    previous = set(diff.previous["_id"]) if diff.previous is not None else set()
    remember_snapshot(conn, "companies")
    return changed, previous, diff.fetched_at


# -- snapshot history and the diff -----------------------------------------------------------
def test_each_fetch_appends_a_snapshot_and_the_latest_view_shows_the_newest() -> None:
    conn = duckdb.connect()
    assert _take(conn, T0, _company("a", "Acme"), _company("b", "Beta")) == 1
    assert _take(conn, T0 + dt.timedelta(minutes=5), _company("a", "Acme")) == 2
    rows = conn.execute(
        "select snapshot_at, count(*) from planhat.company_snapshots group by 1 order by 1"
    ).fetchall()
    assert [n for _, n in rows] == [2, 1]
    assert conn.execute("select _id from planhat_current.companies").fetchall() == [("a",)]
    types = dict(
        conn.execute(
            "select column_name, data_type from information_schema.columns "
            "where table_name = 'company_snapshots'"
        ).fetchall()
    )
    assert types["snapshot_at"] == "TIMESTAMP WITH TIME ZONE"
    assert "partition_date" not in types
    # an empty snapshot (Planhat holds nothing) empties the latest view, not the history
    assert _take(conn, T0 + dt.timedelta(minutes=10)) == 2
    assert conn.execute("select count(*) from planhat_current.companies").fetchall() == [(0,)]


def test_history_keeps_a_day_in_full_and_the_last_snapshot_of_each_earlier_day() -> None:
    conn = duckdb.connect()
    times = [T0 + dt.timedelta(hours=h) for h in (0, 6, 12, 30, 40, 50)]
    for at in times:
        _take(conn, at, _company("a", f"Acme {at:%H}"))
    kept = [
        r[0]
        for r in conn.execute(
            "select distinct snapshot_at from planhat.company_snapshots order by 1"
        ).fetchall()
    ]
    # 0 h, 6 h and 12 h fall more than a day before the newest (50 h) and on one day: only its
    # last (12 h) stays; 30 h, 40 h and 50 h are within a day of the newest: all stay
    expected = [times[2], times[3], times[4], times[5]]
    assert [pd.Timestamp(k) for k in kept] == [pd.Timestamp(t) for t in expected]


@pytest.mark.parametrize("stored", [True, False], ids=["stored_difference", "full_compare"])
def test_only_changed_rows_reach_hull_and_an_unchanged_snapshot_hands_over_nothing(
    stored: bool,
) -> None:
    conn = duckdb.connect()
    conn.execute("create schema ops")
    _take(conn, T0, _company("a", "Acme"), _company("b", "Beta"), stored=stored)
    changed, previous, mark = _apply(conn, None)
    assert changed == {"a", "b"} and previous == set()
    # the same content again: a new snapshot, nothing for Hull, nothing written to the copy
    _take(
        conn,
        T0 + dt.timedelta(minutes=5),
        _company("a", "Acme"),
        _company("b", "Beta"),
        stored=stored,
    )
    before = conn.execute(f"select * from {applied_table('companies')} order by _id").fetchall()
    changed, previous, mark = _apply(conn, pd.Timestamp(mark))
    assert changed == set()
    assert conn.execute(f"select * from {applied_table('companies')} order by _id").fetchall() == (
        before
    )
    # one company renamed, one gone, one new: only the renamed and the new are handed over,
    # the renamed one with its previous version; the gone one leaves the copy
    _take(
        conn,
        T0 + dt.timedelta(minutes=10),
        _company("a", "Acme Corp"),
        _company("c", "Gamma"),
        stored=stored,
    )
    if stored:  # taken with the snapshot: Hull's job reads these rows, not both full lists
        stored_rows = conn.execute(
            f"select _change, _id, name from {diff_table('companies')} order by 1, 2"
        )
        assert stored_rows.fetchall() == [
            ("changed", "a", "Acme Corp"),
            ("changed", "c", "Gamma"),
            ("gone", "b", None),
            ("previous", "a", "Acme"),
        ]
    changed, previous, mark = _apply(conn, pd.Timestamp(mark))
    assert changed == {"a", "c"} and previous == {"a"}
    copy = conn.execute(f"select _id, name from {applied_table('companies')} order by 1")
    assert copy.fetchall() == [("a", "Acme Corp"), ("c", "Gamma")]
    # no newer snapshot than the mark: nothing at all; an applied difference is not kept
    assert diff_snapshot(conn, "companies", pd.Timestamp(mark)) is None
    assert not conn.execute(
        "select * from information_schema.tables where table_name = 'hull_planhat_companies_diff'"
    ).fetchall()


def test_hull_reads_the_difference_stored_with_the_snapshot() -> None:
    """The snapshot's difference is what Hull applies: a row it leaves out is not handed
    over (Hull does not compare the full lists again); a snapshot taken after it is compared
    in full."""
    conn = duckdb.connect()
    conn.execute("create schema ops")
    _take(conn, T0, _company("a", "Acme"), _company("b", "Beta"))
    _, _, mark = _apply(conn, None)
    later = T0 + dt.timedelta(minutes=5)
    _take(conn, later, _company("a", "Acme 2"), _company("b", "Beta 2"), stored=True)
    conn.execute(f"delete from {diff_table('companies')} where _id = 'b'")  # as if unchanged
    changed, _, mark = _apply(conn, pd.Timestamp(mark))
    assert changed == {"a"}
    # a newer snapshot without a stored difference (stored for an older one): full compare
    _take(conn, later + dt.timedelta(minutes=1), _company("a", "Acme 3"), stored=True)
    _take(conn, later + dt.timedelta(minutes=2), _company("a", "Acme 4"), _company("b", "B"))
    changed, _, _ = _apply(conn, pd.Timestamp(mark))
    assert changed == {"a", "b"}


def test_a_difference_is_not_applied_to_a_copy_other_than_its_own() -> None:
    """A copy rebuilt since (dropped, or Planhat's columns moved), or one Hull advanced since
    (its watermark moved), is compared in full: the stored difference was taken against
    another copy."""
    conn = duckdb.connect()
    conn.execute("create schema ops")
    conn.execute(
        "create table ops.hull_watermarks (source varchar primary key, fetched_at timestamptz)"
    )
    _take(conn, T0, _company("a", "Acme"), _company("b", "Beta"))
    _, _, mark = _apply(conn, None)
    later = T0 + dt.timedelta(minutes=5)
    _take(conn, later, _company("a", "Acme 2"), _company("b", "Beta"), stored=True)
    conn.execute(f"drop table {applied_table('companies')}")
    changed, _, _ = _apply(conn, pd.Timestamp(mark))
    assert changed == {"a", "b"}

    # only a differs from the copy when the snapshot is stored; then the copy moves on (b
    # rewritten, the watermark advanced) without the stored difference being dropped
    again = later + dt.timedelta(minutes=1)
    _take(conn, again, _company("a", "Acme 3"), _company("b", "Beta"), stored=True)
    conn.execute(f"update {applied_table('companies')} set record = '{{}}' where _id = 'b'")
    conn.execute("insert into ops.hull_watermarks values ('planhat.companies', ?)", [later])
    changed, _, _ = _apply(conn, pd.Timestamp(mark))
    assert changed == {"a", "b"}


# -- what the UI shows --------------------------------------------------------------------------
def _defs() -> dg.Definitions:
    return build_definitions(load_settings())


def test_a_stored_snapshot_says_how_much_differs_from_the_one_before(tmp_path: Path) -> None:
    database = str(tmp_path / "w.duckdb")

    def take(at: dt.datetime, *companies: dict) -> tuple[int, bool]:
        stored = write_snapshot(
            database, "companies", companies_frame(list(companies), fetched_at=at), at
        )
        return stored.changed, stored.first

    assert take(T0) == (0, True)  # Planhat holds nothing yet: still the first snapshot
    assert take(T0 + dt.timedelta(minutes=1), _company("a", "Acme"), _company("b", "Beta")) == (
        2,
        False,
    )
    # the same content fetched again: nothing differs, whatever the fetch time
    later = T0 + dt.timedelta(minutes=2)
    assert take(later, _company("a", "Acme"), _company("b", "Beta")) == (0, False)
    # one renamed (its old and its new row), one gone, one new
    assert take(later + dt.timedelta(minutes=1), _company("a", "Acme 2"), _company("c", "Cy")) == (
        4,
        False,
    )


def test_node_labels_are_unique_and_say_what_they_are() -> None:
    """The graph labels a node with its key's last part: no two nodes may share one."""
    specs = _defs().resolve_all_asset_specs()
    labels = Counter(s.key.path[-1] for s in specs)
    assert [label for label, n in labels.items() if n > 1] == []
    keys = {s.key.to_user_string() for s in specs}
    assert {"hull/users", "planhat/team_members", "copper/companies"} <= keys
    assert {"planhat/company_snapshots", "planhat/enduser_snapshots"} <= keys
    assert not {"planhat/users", "planhat/companies", "planhat/endusers"} & keys


def test_every_asset_has_a_kind() -> None:
    for spec in _defs().resolve_all_asset_specs():
        assert spec.kinds, spec.key.to_user_string()


def test_no_asset_offers_a_partition_that_can_never_be_filled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Planhat keeps no history: its snapshots are not partitioned, nor is their fetch job or
    any request the sensor makes."""
    monkeypatch.setenv("PLANHAT_API_TOKEN", "token")
    monkeypatch.setenv("PLANHAT_TENANT_TOKEN", "tenant")
    defs = _defs()
    specs = {s.key: s for s in defs.resolve_all_asset_specs()}
    for key in SNAPSHOT_KEYS:
        assert specs[key].partitions_def is None, key
    job = defs.resolve_job_def("planhat_fetch")
    assert job.partitions_def is None
    sensor = build_planhat_fetch_sensor(load_settings(), planhat_fetch_job())
    request = sensor(dg.build_sensor_context())
    assert request.partition_key is None


def test_the_planhat_sensor_says_which_credentials_are_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`dagster dev` with nothing set: a skipped tick that says what to set, not a stack trace
    at every tick."""
    monkeypatch.delenv("PLANHAT_API_TOKEN", raising=False)
    monkeypatch.setenv("PLANHAT_TENANT_TOKEN", "tenant")
    sensor = build_planhat_fetch_sensor(load_settings(), planhat_fetch_job())
    skipped = sensor(dg.build_sensor_context())
    assert isinstance(skipped, dg.SkipReason)
    assert "PLANHAT_API_TOKEN not set" in skipped.skip_message
    assert "PLANHAT_TENANT_TOKEN" not in skipped.skip_message
    monkeypatch.setenv("PLANHAT_API_TOKEN", "token")
    assert isinstance(sensor(dg.build_sensor_context()), dg.RunRequest)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Stack:
    with _started(tmp_path_factory.mktemp("ui")) as started:
        started.prepare()
        assert started.run("planhat_delivery").success
        assert started.run("planhat_fetch").success
        assert started.run("planhat_destinations").success
        yield started


def test_every_table_asset_reports_its_columns(stack: Stack, tmp_path: Path) -> None:
    """Each materialized asset carries ``dagster/column_schema``, timestamps typed as such."""
    defs = _defs()
    keys = [s.key for s in defs.resolve_all_asset_specs()]
    missing, schemas, undescribed = [], {}, []
    for key in keys:
        event = stack.instance.get_latest_materialization_event(key)
        assert event is not None, key.to_user_string()
        metadata = event.asset_materialization.metadata
        if "dagster/column_schema" not in metadata:
            missing.append(key.to_user_string())
            continue
        columns = metadata["dagster/column_schema"].schema.columns
        schemas[key.to_user_string()] = {c.name: c.type for c in columns}
        # a destination's columns are its operator's ``source_sql``'s: theirs to describe
        if key.path[-1].startswith("destination_"):
            continue
        undescribed += [f"{key.to_user_string()}.{c.name}" for c in columns if not c.description]
    assert missing == []
    assert undescribed == []  # the UI's Columns tab says what each column holds
    assert schemas["planhat/company_snapshots"]["snapshot_at"] == "timestamp with time zone"
    assert schemas["hull/users"]["updated_at"] == "timestamp with time zone"
    assert schemas["planhat/deliveries"]["delivered_at"] == "timestamp with time zone"
    for table in ("hull/users", "hull/accounts", "hull/events", "planhat/company_snapshots"):
        latest = stack.instance.get_latest_materialization_event(dg.AssetKey(table.split("/")))
        assert latest.asset_materialization.metadata["dagster/row_count"].value > 0, table
    plumbing = {"partition_expr", "current_view"}
    for key in keys:
        metadata = stack.instance.get_latest_materialization_event(key).asset_materialization
        assert not plumbing & set(metadata.metadata), key.to_user_string()


def test_matched_records_the_newest_snapshot_does_not_list_are_counted(tmp_path: Path) -> None:
    database = str(tmp_path / "warehouse.duckdb")
    assert unseen_by_snapshot(database, "companies", ["a", "b"]) == 2  # no warehouse yet
    with duckdb.connect(database) as conn:
        conn.execute("create schema planhat_current")
        conn.execute(
            "create view planhat_current.companies as select unnest(['a', 'b']) as external_id"
        )
        conn.execute(
            "create view planhat_current.endusers as select * from (values"
            " ('u1', 'x@example.com'), (null, 'y@example.com')) t(external_id, email)"
        )
    assert unseen_by_snapshot(database, "companies", []) == 0
    assert unseen_by_snapshot(database, "companies", ["a", "b", "a"]) == 0
    assert unseen_by_snapshot(database, "companies", ["a", "c"]) == 1
    listed = ["external_id:u1", "email:y@example.com"]
    assert unseen_by_snapshot(database, "endusers", listed) == 0
    assert (
        unseen_by_snapshot(database, "endusers", [*listed, "external_id:u2", "email:z@x.io"]) == 2
    )
