"""The warehouse I/O manager: exact partition replacement, typed empty tables, current views."""

import datetime as dt
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd

from hull_planhat_pipelines.warehouse import WarehouseIOManager

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
    @dg.asset(
        key=["copper", "things"],
        partitions_def=PARTITIONS,
        io_manager_key="warehouse_io_manager",
        metadata={
            "partition_expr": "partition_date",
            "current_view": {"key": "id", "order_by": ["date_modified"]},
        },
    )
    def things(context: dg.AssetExecutionContext) -> pd.DataFrame:
        return frame_for[context.partition_key]

    result = dg.materialize(
        [things],
        partition_key=partition,
        resources={"warehouse_io_manager": WarehouseIOManager(database=str(database))},
        raise_on_error=False,
    )
    assert result.success is succeeds


def _query(database: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(database), read_only=True) as conn:
        return conn.execute(sql).fetchall()


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
