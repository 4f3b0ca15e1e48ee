"""Batches: ENUM-coded exports come back as text, in the order the stored values give; the
in-memory instance under a batch serves the next one clean, or is closed."""

from __future__ import annotations

from collections.abc import Iterator

import duckdb
import pandas as pd
import pytest

from hull_planhat_pipelines.sync.hull import batch as batch_module
from hull_planhat_pipelines.sync.hull.batch import Batch, batch
from hull_planhat_pipelines.sync.operator_sql import is_locked_down, lock_down


def test_an_exported_table_is_ordered_by_its_values_not_by_their_codes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(batch_module, "SHARED_FROM_ROWS", 0)  # coded however small
    with batch() as work:
        # inserted so that the ENUM's codes (first seen first) disagree with the text order
        work.sql(
            "create temp table t as select * from (values ('b', 'x', 2), ('c', 'y', 1),"
            " ('a', 'x', 3), ('b', null, 1)) v(hull_id, claim, n)"
        )
        frame = work.export_table("t", ("hull_id", "claim"), ("hull_id", "n"))
        rows = list(frame.itertuples(index=False, name=None))
        assert rows == [("a", "x", 3), ("b", None, 1), ("b", "x", 2), ("c", "y", 1)]
        assert all(type(h) is str for h in frame["hull_id"])
        # the table stays (the caller drops it), and its copy-based sibling agrees
        assert work.export("select * from t order by hull_id, n", ("hull_id", "claim")).equals(
            frame
        )


def test_a_small_table_crosses_as_text_and_a_large_one_as_codes_with_the_same_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ENUM codes only from ``SHARED_FROM_ROWS`` rows: below, no type is made; either way the
    frame holds the same text values in the same order."""
    enums = "select count(*) from duckdb_types() where type_name like '\\_enum\\_%' escape '\\'"
    with batch() as work:
        work.sql(
            "create temp table t as select * from (values ('b', 'x', 2), ('a', null, 1))"
            " v(hull_id, claim, n)"
        )
        monkeypatch.setattr(batch_module, "SHARED_FROM_ROWS", 3)
        small = work.export_table("t", ("hull_id", "claim"), ("hull_id",))
        assert work.scalar(enums) == 0
        monkeypatch.setattr(batch_module, "SHARED_FROM_ROWS", 2)
        coded = work.export_table("t", ("hull_id", "claim"), ("hull_id",))
        assert work.scalar(enums) == 2
    assert small.equals(coded)
    assert list(small.itertuples(index=False, name=None)) == [("a", None, 1), ("b", "x", 2)]


# -- the instance under a batch --------------------------------------------------------------
def _host(work: Batch) -> duckdb.DuckDBPyConnection:
    return work._host  # which instance served the batch is the point here


@pytest.fixture(autouse=True)
def no_idle_instance() -> Iterator[None]:
    """Each test starts and ends without an idle instance (another test's would serve it)."""
    while batch_module._idle:
        batch_module._idle.pop().close()
    yield
    while batch_module._idle:
        batch_module._idle.pop().close()


def test_the_next_batch_runs_on_the_same_instance_and_sees_nothing_of_the_last(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(batch_module, "SHARED_FROM_ROWS", 0)  # the export makes its ENUM
    with batch() as first:
        first.sql("insert into in_records values ('user', 'k', 'person', '1', null, false)")
        first.sql("create temp table t as select 'a' as hull_id")
        first.export_table("t", ("hull_id",))  # creates an ENUM type
        assert first.scalar("select hull_stable_id('user', 'k')")
        host = _host(first)
    with batch() as second:
        assert _host(second) is host  # kept: no new instance to build
        assert second.scalar("select count(*) from in_records") == 0
        assert second.scalar("select count(*) from duckdb_tables() where table_name = 't'") == 0
        types = "select count(*) from duckdb_types() where type_name like '\\_enum\\_%' escape '\\'"
        assert second.scalar(types) == 0
        assert second.scalar("select hull_stable_id('user', 'k')")  # the macros stay


def test_a_locked_down_instance_serves_no_other_batch() -> None:
    with batch() as locked:
        lock_down(locked.con)
        host = _host(locked)
    with batch() as after:
        assert _host(after) is not host
        assert not is_locked_down(after.con)
        after.sql("set threads = 1")  # its configuration is its own


def test_an_instance_a_batch_left_a_table_in_is_not_kept() -> None:
    with batch() as careless:
        careless.sql("create table main.kept as select 1 as x")  # outside its temporary schema
        host = _host(careless)
    with batch() as after:
        assert _host(after) is not host
        assert after.scalar("select count(*) from duckdb_tables() where table_name = 'kept'") == 0


def test_a_large_batch_gives_its_memory_back_before_its_instance_is_kept() -> None:
    with batch() as large:
        large.sql(
            "create temp table big as select i, md5(i::varchar) as s from range(2000000) t(i)"
        )
        held = large.scalar("select sum(memory_usage_bytes) from duckdb_memory()")
        assert held > batch_module.KEEP_BELOW_BYTES
        host = _host(large)
    assert batch_module._idle == [host]
    assert host.execute("select sum(memory_usage_bytes) from duckdb_memory()").fetchone()[0] < (
        batch_module.KEEP_BELOW_BYTES
    )


def test_a_batch_with_its_own_threads_leaves_the_idle_instance_alone() -> None:
    with batch() as plain:
        host = _host(plain)
    with batch(threads=1) as threaded:
        assert _host(threaded) is not host
        assert threaded.scalar("select current_setting('threads')") == 1
    assert batch_module._idle == [host]


# -- threads ---------------------------------------------------------------------------------
def _threads(work: Batch) -> int:
    return int(work.scalar("select current_setting('threads')"))


CORES = int(duckdb.connect().execute("select current_setting('threads')").fetchall()[0][0])


def test_a_batch_of_small_tables_runs_on_one_thread_and_a_large_one_on_every_core(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(batch_module, "PARALLEL_ROWS", 100)
    with batch() as work:
        work.load("small", pd.DataFrame({"i": range(99)}))
        assert _threads(work) == 1
        work.load("large", pd.DataFrame({"i": range(100)}))
        assert _threads(work) == CORES
        host = _host(work)
    with batch() as after:  # the kept instance starts on one thread again
        assert _host(after) is host
        assert _threads(after) == 1
    with batch(threads=CORES) as threaded:  # a batch's own setting is kept, whatever it loads
        threaded.load("small", pd.DataFrame({"i": range(3)}))
        assert _threads(threaded) == CORES


def test_a_batch_is_sized_before_its_configuration_is_locked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(batch_module, "PARALLEL_ROWS", 100)
    with batch() as work:
        work.plan_for(100)  # what a batch about to be locked down knows it will load
        lock_down(work.con)
        work.load("small", pd.DataFrame({"i": range(3)}))
        assert _threads(work) == CORES
    with batch() as locked:
        lock_down(locked.con)
        locked.load("large", pd.DataFrame({"i": range(100)}))  # too late: no error, one thread
        assert _threads(locked) == 1
