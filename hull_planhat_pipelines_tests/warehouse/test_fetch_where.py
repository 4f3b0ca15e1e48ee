"""Rows read by id from a large table: the blocks one statement reads are those of one row
group, not of the whole table (``connection.fetch_where``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from hull_planhat_pipelines.warehouse import attachments
from hull_planhat_pipelines.warehouse.connection import (
    ROW_GROUPS_PER_FETCH,
    connect,
    fetch_rowids,
    fetch_where,
)
from hull_planhat_pipelines_tests.warehouse_support import cached_bytes, text_table

ROWS = 400_000  # four row groups
SPREAD = "id % 4000 = 7"  # a hundred rows, in every row group
APART = "id % 100 = 7 and (id < 122880 or id >= 368640)"  # 1,542 rows, in the first and last


def _table(path: str) -> None:
    text_table(path, ROWS, ", range % 13 as n")


def test_scattered_rows_are_read_one_row_group_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hundred rows spread over the table: each statement reads the blocks of one row group
    (a third of the table's at most), where one statement read every block of the selected
    columns. The blocks each statement left are counted, then all are evicted."""
    path = str(tmp_path / "w.duckdb")
    _table(path)
    read: list[int] = []
    evict = attachments._drop_file_blocks

    def counted(attachment: attachments._Attachment) -> None:
        read.append(cached_bytes(path))
        evict(attachment)

    monkeypatch.setattr(attachments, "LOOK_AFTER_SECONDS", 0.0)
    monkeypatch.setattr(attachments, "FILE_BLOCKS_KEPT_BYTES", 0)
    monkeypatch.setattr(attachments, "_drop_file_blocks", counted)
    with connect(path, read_only=True) as conn:
        sizes = dict(
            conn.execute("select database_name, block_size from pragma_database_size()").fetchall()
        )
        blocks = conn.execute(
            "select count(distinct block_id) from pragma_storage_info('t')"
            " where column_name in ('id', 's')"
        ).fetchone()[0]
        whole = blocks * sizes["w"]  # every block of the two columns
        read.clear()
        rows = fetch_where(conn, "t", SPREAD, "id, s")
    assert max(read) <= whole / 3, (max(read), whole)
    assert ROW_GROUPS_PER_FETCH == 1
    assert sorted(rows["id"]) == list(range(7, ROWS, 4000))
    assert rows["s"].str.endswith("x" * 200).all()


def test_the_four_row_groups_holding_rows_are_read_in_four_statements(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One row group a statement: the rows of four come in four statements, in the table's
    order; rows of two groups apart, in two."""
    path = str(tmp_path / "w.duckdb")
    _table(path)
    reads: list[str] = []
    execute = attachments.WarehouseConnection.execute

    def spied(self: attachments.WarehouseConnection, sql: str, *args: object) -> object:
        if sql.startswith("select id, n from t where"):
            reads.append(sql)
        return execute(self, sql, *args)

    monkeypatch.setattr(attachments.WarehouseConnection, "execute", spied)
    with connect(path, read_only=True) as conn:
        rows = fetch_where(conn, "t", SPREAD, "id, n")
        assert rows["id"].tolist() == list(range(7, ROWS, 4000))  # the table's order
        assert len(reads) == 4
        reads.clear()
        rows = fetch_where(conn, "t", APART, "id, n")
        assert rows["id"].tolist() == [
            i for i in range(7, ROWS, 100) if i < 122_880 or i >= 368_640
        ]
        assert len(reads) == 2


def test_the_rows_come_with_their_columns_and_none_when_nothing_matches(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "w.duckdb")
    _table(path)
    with connect(path) as conn:
        conn.register("_wanted", pd.DataFrame({"id": [399_999, 5, 250_000, 123_000]}))
        rows = fetch_where(conn, "t", "id in (select id from _wanted)", "id, n")
        assert list(rows.columns) == ["id", "n"]
        rows = rows.sort_values("id")
        assert rows["id"].tolist() == [5, 123_000, 250_000, 399_999]
        assert rows["n"].tolist() == [5 % 13, 123_000 % 13, 250_000 % 13, 399_999 % 13]
        none = fetch_where(conn, "t", "id < 0", "id, s")
        assert list(none.columns) == ["id", "s"] and none.empty
        assert not conn.execute(
            "select * from duckdb_tables() where database_name = 'temp'"
        ).fetchall()  # nothing left behind


def test_a_transaction_reads_its_own_writes_and_not_its_deletions(tmp_path: Path) -> None:
    path = str(tmp_path / "w.duckdb")
    _table(path)
    with connect(path) as conn:
        conn.execute("begin transaction")
        conn.execute("delete from t where id = 8007")
        conn.execute("insert into t values (500000, 'new', 1), (500007, 'newer', 2)")
        rows = fetch_where(conn, "t", "id % 4000 = 7 or id = 500000", "id, s").sort_values("id")
        assert rows["id"].tolist() == [i for i in range(7, ROWS, 4000) if i != 8007] + [
            500000,
            500007,
        ]
        assert rows["s"].tolist()[-2:] == ["new", "newer"]
        conn.execute("rollback")


def test_rows_found_by_the_callers_scans_are_read_once_each(tmp_path: Path) -> None:
    """``fetch_rowids``: the row ids two scans found (a row both found named twice), read once
    each, over several row groups, with no scan to find them again."""
    path = str(tmp_path / "w.duckdb")
    _table(path)
    with connect(path) as conn:
        conn.execute("create temp table _found (r bigint)")
        conn.execute("insert into _found select rowid from t where id in (3, 13, 150000, 399998)")
        conn.execute("insert into _found select rowid from t where n = 0 and id < 30")
        rows = fetch_rowids(conn, "t", "_found", "id, n").sort_values("id")
        assert rows["id"].tolist() == [0, 3, 13, 26, 150_000, 399_998]
        assert rows["n"].tolist() == [0, 3, 0, 0, 150_000 % 13, 399_998 % 13]
        conn.execute("delete from _found")
        none = fetch_rowids(conn, "t", "_found", "id, s")
        assert list(none.columns) == ["id", "s"] and none.empty
