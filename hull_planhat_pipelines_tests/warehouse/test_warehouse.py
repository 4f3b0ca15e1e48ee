"""The warehouse layer: exact partition replacement, typed empty tables, current views."""

import datetime as dt
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest

from hull_planhat_pipelines.warehouse import (
    CopperSlice,
    CurrentView,
    connect,
    replace_table,
    write_copper_table,
)
from hull_planhat_pipelines.warehouse.connection import transaction
from hull_planhat_pipelines_tests.warehouse_support import query as _query

PARTITIONS = dg.DailyPartitionsDefinition(start_date="2026-01-01", end_date="2026-01-05")


def _rows(day: str, ids: list[int], version: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": pd.Series(ids, dtype="int64"),
            "name": pd.Series([f"v{version}-{i}" for i in ids], dtype="string"),
            "date_modified": pd.Series(
                [pd.Timestamp(day, tz="UTC") + pd.Timedelta(seconds=version)] * len(ids),
                dtype="datetime64[us, UTC]",
            ),
            "partition_date": pd.Series([pd.Timestamp(day)] * len(ids), dtype="datetime64[us]"),
        }
    )


def _materialize(
    database: Path, frame_for: dict[str, pd.DataFrame], partition: str, succeeds: bool = True
) -> None:
    """A partitioned asset that writes its day through the warehouse layer."""

    @dg.asset(key=["copper", "things"], partitions_def=PARTITIONS)
    def things(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        day = dt.date.fromisoformat(context.partition_key)
        written = write_copper_table(
            str(database),
            "copper.things",
            frame_for[context.partition_key],
            CopperSlice(first=day, end=day + dt.timedelta(days=1)),
            current_view=CurrentView("id", ("date_modified",)),
        )
        return dg.MaterializeResult(metadata=written["schema"])

    result = dg.materialize([things], partition_key=partition, raise_on_error=False)
    assert result.success is succeeds


def test_rerunning_a_partition_replaces_exactly_that_partition(tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    _materialize(db, {"2026-01-01": _rows("2026-01-01", [1, 2], 1)}, "2026-01-01")
    _materialize(db, {"2026-01-02": _rows("2026-01-02", [2, 3], 2)}, "2026-01-02")
    _materialize(db, {"2026-01-01": _rows("2026-01-01", [1], 3)}, "2026-01-01")
    rows = _query(db, "select id, name from copper.things order by partition_date, id")
    assert rows == [(1, "v3-1"), (2, "v2-2"), (3, "v2-3")]
    current = _query(db, "select id, name from copper_current.things order by id")
    assert current == [(1, "v3-1"), (2, "v2-2"), (3, "v2-3")]


def test_an_empty_partition_creates_a_typed_table_and_clears_the_old_rows(tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    empty = _rows("2026-01-03", [], 1)
    _materialize(db, {"2026-01-03": empty}, "2026-01-03")
    types = dict(
        _query(
            db,
            "select column_name, data_type from information_schema.columns "
            "where table_name = 'things'",
        )
    )
    assert types["name"] == "VARCHAR" and types["id"] == "BIGINT"
    _materialize(db, {"2026-01-03": _rows("2026-01-03", [7], 1)}, "2026-01-03")
    _materialize(db, {"2026-01-03": empty}, "2026-01-03")
    assert _query(db, "select count(*) from copper.things") == [(0,)]


def test_new_columns_are_added_and_inserts_go_by_name(tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    _materialize(db, {"2026-01-01": _rows("2026-01-01", [1], 1)}, "2026-01-01")
    wider = _rows("2026-01-02", [2], 1)[["partition_date", "name", "id", "date_modified"]]
    wider["extra"] = pd.Series(["x"], dtype="string")
    _materialize(db, {"2026-01-02": wider}, "2026-01-02")
    assert _query(db, "select id, name, extra from copper.things order by id") == [
        (1, "v1-1", None),
        (2, "v1-2", "x"),
    ]


def test_a_failed_write_leaves_the_partition_as_it_was(tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    _materialize(db, {"2026-01-01": _rows("2026-01-01", [1, 2], 1)}, "2026-01-01")
    clash = _rows("2026-01-01", [9], 2)
    clash["name"] = pd.Series([dt.date(2026, 1, 1)], dtype="object")  # a DATE into a VARCHAR
    clash["id"] = pd.Series(["not a number"], dtype="string")  # cannot go into BIGINT
    _materialize(db, {"2026-01-01": clash}, "2026-01-01", succeeds=False)
    assert _query(db, "select id from copper.things order by id") == [(1,), (2,)]


def test_a_connection_waits_while_another_process_holds_the_lock(tmp_path: Path) -> None:
    database, release = tmp_path / "w.duckdb", tmp_path / "release"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, os, time\n"
            f"conn = duckdb.connect({str(database)!r})\n"
            "print('held', flush=True)\n"
            f"while not os.path.exists({str(release)!r}):\n"
            "    time.sleep(0.01)\n"
            "conn.close()\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    waits: list[float] = []

    def sleeper(seconds: float) -> None:  # the other run finishes while we wait
        waits.append(seconds)
        release.touch()
        holder.wait(timeout=10)

    try:
        assert holder.stdout.readline().strip() == "held"
        conn = connect(str(database), sleeper=sleeper)
        conn.close()
    finally:  # the holder never outlives the test, whatever failed
        release.touch()
        holder.wait(timeout=10)
    assert waits == [0.1]


def test_a_lock_held_past_the_wait_raises(tmp_path: Path) -> None:
    database = tmp_path / "w.duckdb"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, sys\nc = duckdb.connect({str(database)!r})\n"
            "print('held', flush=True)\nsys.stdin.read()",
        ],
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        ticks = iter(range(100))
        with pytest.raises(duckdb.IOException, match="lock"):
            connect(str(database), wait=3, sleeper=lambda s: None, clock=lambda: next(ticks))
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)


# -- the Copper write: one transaction per run, replace a range or upsert a window -------------
def _copper(days_ids: list[tuple[str, int]], version: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": pd.Series([i for _, i in days_ids], dtype="Int64"),
            "name": pd.Series([f"v{version}-{i}" for _, i in days_ids], dtype="string"),
            "date_modified": pd.Series(
                [pd.Timestamp(day, tz="UTC") + pd.Timedelta(hours=12) for day, _ in days_ids],
                dtype="datetime64[us, UTC]",
            ),
            "partition_date": pd.Series(
                [dt.date.fromisoformat(day) for day, _ in days_ids], dtype=object
            ),
        }
    )


MONTHS = CopperSlice(first=dt.date(2026, 1, 1), end=dt.date(2026, 3, 1))
"""January and February, replaced whole."""
TYPES = {"partition_date": "DATE"}


def test_a_range_write_replaces_its_months_in_one_write_and_counts_each(tmp_path: Path) -> None:
    database = str(tmp_path / "w.duckdb")
    first = _copper([("2026-01-03", 1), ("2026-01-20", 2), ("2026-02-02", 3), ("2026-03-05", 4)], 1)
    written = write_copper_table(
        database,
        "copper.things",
        first,
        CopperSlice(first=dt.date(2026, 1, 1), end=dt.date(2026, 4, 1)),
        types=TYPES,
        current_view=CurrentView("id", ("date_modified",)),
    )
    assert written["counts"] == {dt.date(2026, 1, 1): 4}  # by year: the partitions
    assert "dagster/column_schema" in written["schema"]
    # January and February again: 2 deleted in Copper, 3 moved into January; March untouched
    again = _copper([("2026-01-03", 1), ("2026-01-25", 3)], 2)
    written = write_copper_table(database, "copper.things", again, MONTHS, types=TYPES)
    assert written["counts"] == {dt.date(2026, 1, 1): 2}  # within the slice written
    assert _query(Path(database), "select id, name from copper.things order by id") == [
        (1, "v2-1"),
        (3, "v2-3"),
        (4, "v1-4"),
    ]
    assert _query(Path(database), "select count(*) from copper_current.things") == [(3,)]
    # the same range again is idempotent
    write_copper_table(database, "copper.things", again, MONTHS, types=TYPES)
    assert _query(Path(database), "select id, name from copper.things order by id") == [
        (1, "v2-1"),
        (3, "v2-3"),
        (4, "v1-4"),
    ]


def test_an_upsert_touches_only_its_window_and_its_ids(tmp_path: Path) -> None:
    database = str(tmp_path / "w.duckdb")
    stored = _copper(
        [("2026-02-01", 1), ("2026-02-10", 2), ("2026-02-20", 3), ("2026-02-21", 4)], 1
    )
    february = CopperSlice(first=dt.date(2026, 2, 1), end=dt.date(2026, 3, 1))
    write_copper_table(database, "copper.things", stored, february, types=TYPES)
    since = int(dt.datetime(2026, 2, 20, tzinfo=dt.UTC).timestamp())
    window = CopperSlice(
        first=dt.date(2026, 2, 1),
        end=dt.date(2026, 3, 1),
        date_column="date_modified",
        since=since,
        until=since + 2 * 86_400 - 1,
    )
    # 1 edited (moves from Feb 1 to Feb 21), 4 deleted in Copper (inside the window), 5 new;
    # 2 and 3: 2 is outside the window and kept; 3 inside it, but a deletion stub says it went
    changed = _copper([("2026-02-21", 1), ("2026-02-21", 5)], 2)
    written = write_copper_table(
        database, "copper.things", changed, window, gone_ids=[3], types=TYPES
    )
    assert _query(Path(database), "select id, name from copper.things order by id") == [
        (1, "v2-1"),
        (2, "v1-2"),
        (5, "v2-5"),
    ]
    assert written["counts"] == {dt.date(2026, 1, 1): 3}  # the year 2026, within the slice
    write_copper_table(database, "copper.things", changed, window, gone_ids=[3], types=TYPES)
    assert _query(Path(database), "select count(*), count(distinct id) from copper.things") == [
        (3, 3)
    ]


def test_a_failed_copper_write_leaves_the_table_as_it_was(tmp_path: Path) -> None:
    database = str(tmp_path / "w.duckdb")
    write_copper_table(database, "copper.things", _copper([("2026-01-03", 1)], 1), MONTHS)
    broken = _copper([("2026-01-04", 2)], 2)
    # the range's delete runs, then the insert fails: a text into the TIMESTAMPTZ column
    broken["date_modified"] = pd.Series(["not a date"], dtype="string")
    with pytest.raises(duckdb.Error):
        write_copper_table(database, "copper.things", broken, MONTHS)
    assert _query(Path(database), "select id, name from copper.things") == [(1, "v1-1")]


def test_an_empty_first_write_creates_a_typed_table(tmp_path: Path) -> None:
    database = str(tmp_path / "w.duckdb")
    written = write_copper_table(database, "copper.things", _copper([], 1), MONTHS, types=TYPES)
    assert written["counts"] == {}
    types = dict(
        _query(
            Path(database),
            "select column_name, data_type from information_schema.columns "
            "where table_name = 'things'",
        )
    )
    assert types["partition_date"] == "DATE" and types["id"] == "BIGINT"


def test_a_whole_table_write_replaces_every_row_and_reports_its_columns(tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    first = replace_table(str(db), "planhat.team_members", _rows("2026-01-01", [1, 2], 1))
    assert first["dagster/row_count"] == 2
    columns = [c.name for c in first["dagster/column_schema"].columns]
    assert columns == ["id", "name", "date_modified", "partition_date"]
    wider = _rows("2026-01-02", [3], 2)
    wider["extra"] = pd.Series(["x"], dtype="string")
    second = replace_table(str(db), "planhat.team_members", wider)
    assert second["dagster/row_count"] == 1
    assert _query(db, "select id, name, extra from planhat.team_members") == [(3, "v2-3", "x")]
    clash = _rows("2026-01-03", [9], 3)
    clash["id"] = pd.Series(["not a number"], dtype="string")  # cannot go into BIGINT
    with pytest.raises(duckdb.Error):
        replace_table(str(db), "planhat.team_members", clash)
    assert _query(db, "select id from planhat.team_members") == [(3,)]
    empty = replace_table(str(db), "planhat.team_members", _rows("2026-01-04", [], 4))
    assert empty["dagster/row_count"] == 0
    assert _query(db, "select count(*) from planhat.team_members") == [(0,)]


def test_a_copper_write_rewrites_only_what_changed_and_counts_it(tmp_path: Path) -> None:
    database = str(tmp_path / "w.duckdb")
    days = [("2026-01-03", 1), ("2026-01-20", 2), ("2026-02-02", 3)]

    def fetched(frame: pd.DataFrame, at: str) -> pd.DataFrame:
        return frame.assign(_fetched_at=pd.Timestamp(at, tz="UTC"))

    first = write_copper_table(
        database, "copper.things", fetched(_copper(days, 1), "2026-03-01"), MONTHS, types=TYPES
    )
    assert first["first"] and first["changed"] == 3 and sorted(first["written_ids"]) == [1, 2, 3]
    # The same records fetched again later: nothing rewritten, their fetch time kept.
    again = write_copper_table(
        database, "copper.things", fetched(_copper(days, 1), "2026-03-02"), MONTHS, types=TYPES
    )
    assert (again["first"], again["changed"], again["written_ids"]) == (False, 0, [])
    assert _query(Path(database), "select distinct _fetched_at::date from copper.things") == [
        (dt.date(2026, 3, 1),)
    ]
    # 2 edited, 3 gone from the range: two changes; 1 stays as it was stored.
    edited = _copper(days[:2], 1)
    edited.loc[1, "name"] = "v2-2"
    later = write_copper_table(
        database, "copper.things", fetched(edited, "2026-03-03"), MONTHS, types=TYPES
    )
    assert later["changed"] == 2 and later["written_ids"] == [2]
    assert _query(
        Path(database), "select id, name, _fetched_at::date from copper.things order by id"
    ) == [(1, "v1-1", dt.date(2026, 3, 1)), (2, "v2-2", dt.date(2026, 3, 3))]


def test_a_copper_write_compares_by_content_hash_whatever_the_time_zone(tmp_path: Path) -> None:
    """Rows are compared on a stored content hash: any column's change counts (a second of a
    timestamp, a value becoming null), the session's time zone does not, and a table written
    before the hash existed gets it on its next write (its rows then rewritten once)."""
    database = str(tmp_path / "w.duckdb")
    days = [("2026-01-03", 1), ("2026-01-20", 2), ("2026-02-02", 3)]
    with duckdb.connect(database) as conn:  # an older table: no hash column
        conn.execute("create schema copper")
        conn.register("legacy", _copper(days, 1))
        conn.execute(
            "create table copper.things as select * exclude (partition_date),"
            " partition_date::date as partition_date from legacy"
        )
    upgraded = write_copper_table(database, "copper.things", _copper(days, 1), MONTHS, types=TYPES)
    assert upgraded["changed"] == 3
    assert _query(Path(database), "select count(*) from copper.things where _row_hash is null") == [
        (0,)
    ]
    with connect(database) as conn:
        conn.execute("set global TimeZone = 'America/New_York'")
        same = write_copper_table(database, "copper.things", _copper(days, 1), MONTHS, types=TYPES)
        conn.execute("reset global TimeZone")
    assert same["changed"] == 0
    edited = _copper(days, 1)
    edited.loc[0, "date_modified"] += pd.Timedelta(seconds=1)
    edited.loc[2, "name"] = None
    later = write_copper_table(database, "copper.things", edited, MONTHS, types=TYPES)
    assert sorted(later["written_ids"]) == [1, 3]
    assert _query(Path(database), "select id, name from copper.things order by id") == [
        (1, "v1-1"),
        (2, "v1-2"),
        (3, None),
    ]


def test_a_transaction_commits_its_block_or_nothing_of_it(tmp_path: Path) -> None:
    with duckdb.connect(str(tmp_path / "w.duckdb")) as conn:
        conn.execute("create table t (v int)")
        with transaction(conn):
            conn.execute("insert into t values (1)")
        with pytest.raises(ValueError, match="half way"), transaction(conn):
            conn.execute("insert into t values (2)")
            raise ValueError("half way")
        with pytest.raises(KeyboardInterrupt), transaction(conn):
            conn.execute("insert into t values (4)")
            raise KeyboardInterrupt
        assert conn.execute("select v from t").fetchall() == [(1,)]
        conn.execute("insert into t values (3)")  # no transaction left open by the failures
        assert conn.execute("select v from t order by v").fetchall() == [(1,), (3,)]
