"""Operator SQL (segments, metrics, destination queries) reads the warehouse and nothing else."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from hull_planhat_pipelines.settings import SegmentSettings
from hull_planhat_pipelines.sync.hull.model import empty_store
from hull_planhat_pipelines.sync.hull.segments import SegmentError, evaluate_segments
from hull_planhat_pipelines.sync.operator_sql import (
    OperatorSqlError,
    as_subquery,
    lock_down,
    run_select,
)
from hull_planhat_pipelines.warehouse import read_only
from hull_planhat_pipelines.warehouse.planhat_queries import run_metric_sql


@pytest.fixture
def warehouse(tmp_path: Path) -> Path:
    path = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(path)) as conn:
        conn.execute("create schema hull")
        conn.execute("create table hull.users as select 'u1' as hull_id, 'ann@x.io' as email")
    return path


def test_copy_to_a_file_is_refused_and_writes_nothing(warehouse: Path, tmp_path: Path) -> None:
    target = tmp_path / "users.csv"
    with read_only(str(warehouse)) as conn:
        with pytest.raises(OperatorSqlError, match="must be a SELECT, not COPY"):
            run_select(lock_down(conn), f"copy hull.users to '{target}'", "destination x")
        # even smuggled behind a SELECT, a second statement is refused before anything runs
        with pytest.raises(OperatorSqlError, match="one SELECT statement, not 2"):
            run_select(conn, f"select 1; copy hull.users to '{target}'", "destination x")
    assert not target.exists()


def test_reading_a_file_is_refused_with_a_clear_error(warehouse: Path) -> None:
    with read_only(str(warehouse)) as conn:
        locked = lock_down(conn)
        with pytest.raises(OperatorSqlError, match=r"/etc/passwd.*disabled by configuration"):
            run_select(locked, "select * from read_csv('/etc/passwd')", "destination x")
        with pytest.raises(ValueError, match="disabled by configuration"):
            run_metric_sql(
                locked, "select column0 as external_id, 1 as value from read_csv('/etc/passwd')"
            )
        assert run_select(locked, "select email from hull.users", "q")["email"].tolist() == [
            "ann@x.io"
        ]


@pytest.mark.parametrize(
    "statement",
    ["pragma version", "attach 'other.duckdb'", "set enable_external_access = true"],
)
def test_only_a_select_is_run(warehouse: Path, statement: str) -> None:
    with (
        read_only(str(warehouse)) as conn,
        pytest.raises(OperatorSqlError, match="must be a SELECT"),
    ):
        run_select(lock_down(conn), statement, "destination x")


def test_the_lockdown_cannot_be_lifted_by_a_query(warehouse: Path) -> None:
    with read_only(str(warehouse)) as conn:
        lock_down(conn)
        with pytest.raises(duckdb.Error, match="locked"):
            conn.execute("set enable_external_access = true")


def test_a_segment_reading_the_file_system_is_refused() -> None:
    segments = SegmentSettings(
        users={"Leak": "email in (select column0 from read_csv('/etc/passwd'))"}
    )
    with pytest.raises(SegmentError, match=r"Leak.*disabled by configuration"):
        evaluate_segments(empty_store("user"), empty_store("account"), segments)


@pytest.mark.parametrize(
    ("written", "body"),
    [
        ("select 1 as a; -- every row", "select 1 as a"),
        ("select 1 as a -- a note\n;", "select 1 as a"),
        ("select ';' as x ;; /* done */", "select ';' as x"),
        ("-- lead\nselect 1 /* keep */ as a", "-- lead\nselect 1 /* keep */ as a"),
    ],
)
def test_an_operator_select_becomes_a_subquery_as_written(written: str, body: str) -> None:
    assert as_subquery(written) == body
    assert duckdb.connect().execute(f"select * from ({as_subquery(written)}\n) s").fetchall()
    with pytest.raises(OperatorSqlError):
        as_subquery("select 1; select 2")


def test_checking_queries_builds_no_database_for_each(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parsing needs an instance, and building one costs hundreds of parses: every metric and
    destination query of every cycle is checked, so the parser is kept (one per thread: a
    DuckDB connection is not shared between threads)."""
    import threading

    from hull_planhat_pipelines.sync import operator_sql

    built: list[int] = []
    connect = duckdb.connect

    def counted(*args: object, **kwargs: object) -> duckdb.DuckDBPyConnection:
        built.append(threading.get_ident())
        return connect(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(operator_sql.duckdb, "connect", counted)
    for _ in range(5):
        operator_sql.check_select("select 1")
        with pytest.raises(OperatorSqlError, match="must be a SELECT"):
            operator_sql.check_select("pragma version")
    assert len(built) <= 1
    other = threading.Thread(target=operator_sql.check_select, args=("select 2",))
    other.start()
    other.join()
    assert len(built) <= 2 and built[-1] == other.ident
