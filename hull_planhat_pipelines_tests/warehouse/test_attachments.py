"""Warehouse connections come from kept instances that attach the file: closing the last one
must release the file exactly as closing a ``duckdb.connect`` connection did."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from hull_planhat_pipelines.sync.operator_sql import lock_down
from hull_planhat_pipelines.warehouse import attachments
from hull_planhat_pipelines.warehouse.connection import connect, release, table_exists
from hull_planhat_pipelines_tests.warehouse_support import cached_bytes, text_table

OTHER_PROCESS = (
    "import duckdb, sys\n"
    "try:\n"
    "    duckdb.connect(sys.argv[1]).close()\n"
    "except duckdb.IOException as exc:\n"
    "    print('locked' if 'lock' in str(exc).lower() else exc)\n"
    "else:\n"
    "    print('opened')\n"
)


def _in_other_process(script: str, path: Path) -> str:
    return subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()


def _other_process_opens(path: Path) -> str:
    return _in_other_process(OTHER_PROCESS, path)


def test_the_file_is_locked_while_a_connection_is_open_and_free_once_the_last_one_closes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "w.duckdb"
    first = connect(str(path))
    first.execute("create schema hull; create table hull.users as select 1 as id")
    second = connect(str(path))  # shares the attachment: its own cursor
    assert table_exists(second, "hull", "users")
    first.close()
    assert _other_process_opens(path) == "locked"
    second.close()
    assert _other_process_opens(path) == "opened"
    # what was written survived the detach: checkpointed into the file, no WAL left behind
    assert not Path(f"{path}.wal").exists()
    with duckdb.connect(str(path), read_only=True) as conn:
        assert conn.execute("select id from hull.users").fetchall() == [(1,)]


OTHER_PROCESS_READS = (
    "import duckdb, sys\n"
    "with duckdb.connect(sys.argv[1], read_only=True) as conn:\n"
    "    print(conn.execute('select count(*) from hull.users').fetchone()[0])\n"
)


def test_a_close_without_checkpoint_frees_the_file_and_the_next_opener_replays_its_log(
    tmp_path: Path,
) -> None:
    path = tmp_path / "w.duckdb"
    conn = connect(str(path))
    conn.execute("create schema hull; create table hull.users as select 1 as id")
    conn.close()
    conn = connect(str(path))
    conn.execute("insert into hull.users values (2), (3)")
    release(conn, checkpoint=False)
    # the commit is in the write-ahead log, not yet in the file, and the file is free
    assert Path(f"{path}.wal").exists()
    assert _other_process_opens(path) == "opened"  # it replayed and checkpointed the log
    conn = connect(str(path))
    conn.execute("insert into hull.users values (4)")
    release(conn, checkpoint=False)
    # a read-only opener in another process sees it all
    assert _in_other_process(OTHER_PROCESS_READS, path) == "4"
    assert Path(f"{path}.wal").exists()  # and leaves the log for a writer to checkpoint
    connect(str(path)).close()  # a plain close checkpoints
    assert not Path(f"{path}.wal").exists()
    with duckdb.connect(str(path), read_only=True) as check:
        assert check.execute("select count(*) from hull.users").fetchone() == (4,)


def test_a_connection_dropped_without_close_releases_the_file(tmp_path: Path) -> None:
    path = tmp_path / "w.duckdb"
    conn = connect(str(path))
    conn.execute("create table t as select 1 as id")
    del conn
    assert _other_process_opens(path) == "opened"


def test_each_file_sees_only_its_own_tables_and_keeps_its_stem_as_catalog(tmp_path: Path) -> None:
    a, b = connect(str(tmp_path / "a.duckdb")), connect(str(tmp_path / "b.duckdb"))
    try:
        a.execute("create schema s; create table s.only_in_a as select 1 as id")
        assert table_exists(a, "s", "only_in_a")
        assert not table_exists(b, "s", "only_in_a")
        assert b.execute("select current_database()").fetchall() == [("b",)]
    finally:
        a.close()
        b.close()


def test_the_other_mode_is_refused_while_the_file_is_open_and_served_once_it_closed(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "w.duckdb")
    connect(path).close()
    reader = connect(path, read_only=True)
    with pytest.raises(duckdb.ConnectionException, match="read-only in this process"):
        connect(path)
    with pytest.raises(duckdb.Error):
        reader.execute("create table t as select 1 as id")
    reader.close()
    writer = connect(path)
    writer.execute("create table t as select 1 as id")
    writer.close()


def test_an_instance_locked_down_for_operator_sql_never_serves_another_connection(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "w.duckdb")
    connect(path).close()
    locked = lock_down(connect(path, read_only=True))
    host = attachments._attached[os.path.abspath(path)].host
    locked.close()
    assert all(idle is not host for idle, _ in attachments._idle)
    writer = connect(path)  # unlocked: it may write, and attach files, again
    writer.execute("create table t as select 1 as id")
    writer.execute("set temp_directory = ''")
    writer.close()


def test_a_missing_file_opened_read_only_fails_and_leaves_nothing_attached(
    tmp_path: Path,
) -> None:
    path = tmp_path / "missing.duckdb"
    with pytest.raises(duckdb.IOException):
        connect(str(path), read_only=True)
    assert os.path.abspath(path) not in attachments._attached
    assert not path.exists()


@pytest.mark.parametrize(("keep_below", "kept"), [(2**40, True), (1, False)])
def test_an_instance_that_held_much_memory_is_closed_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep_below: int, kept: bool
) -> None:
    """Detaching frees an instance's memory to its allocator, not to the system: one whose
    buffers, or the process since its creation, grew past ``KEEP_BELOW_BYTES`` is closed, so
    that a heavy step's memory is returned."""
    monkeypatch.setattr(attachments, "KEEP_BELOW_BYTES", keep_below)
    monkeypatch.setattr(attachments, "_idle", [])
    path = str(tmp_path / "w.duckdb")
    conn = connect(path)
    conn.execute("create table t as select range as id from range(100000)")
    host = attachments._attached[os.path.abspath(path)].host
    conn.close()
    assert ([idle for idle, _ in attachments._idle] == [host]) is kept
    assert _other_process_opens(Path(path)) == "opened"


def test_a_kept_instance_gives_its_memory_back_and_keeps_its_memory_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The allocator is flushed when the file detaches (by lowering the limit): the instance
    kept for the next connection has its default limit back, and the next step's work runs."""
    monkeypatch.setattr(attachments, "KEEP_BELOW_BYTES", 2**40)
    monkeypatch.setattr(attachments, "_idle", [])
    default = duckdb.connect().execute("select current_setting('memory_limit')").fetchone()
    path = str(tmp_path / "w.duckdb")
    conn = connect(path)
    conn.execute("create table t as select range as id, repeat('x', 200) as s from range(200000)")
    conn.execute("select s, count(*) from t group by s").fetchall()
    host = attachments._attached[os.path.abspath(path)].host
    conn.close()
    assert [idle for idle, _ in attachments._idle] == [host]
    assert host.execute("select current_setting('memory_limit')").fetchone() == default
    with connect(path) as again:
        assert again.execute("select count(distinct id) from t").fetchone() == (200000,)


def test_a_statement_leaves_few_of_the_file_blocks_it_read_cached_and_spills_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step scanning columns of a large table does not hold them until the file detaches:
    after each statement the instance keeps at most ``FILE_BLOCKS_KEPT_BYTES`` of the file's
    blocks. A temporary table, the statement's result and an open transaction's writes stay
    in memory (none is spilled to disk), and the memory limit is the default again."""
    monkeypatch.setattr(attachments, "LOOK_AFTER_SECONDS", 0.0)  # after every statement
    path = str(tmp_path / "w.duckdb")
    text_table(path)
    default = duckdb.connect().execute("select current_setting('memory_limit')").fetchone()
    allowance = attachments.FILE_BLOCKS_KEPT_BYTES
    with connect(path) as conn:
        conn.execute("create temp table kept as select range as i from range(3000000)")
        temporary = cached_bytes(path, "IN_MEMORY_TABLE")
        assert temporary > allowance  # more than the allowance: it would be evicted first
        result = conn.execute("select id, s from t where id % 1000 = 0 order by id")
        assert cached_bytes(path, "BASE_TABLE") <= allowance
        assert len(result.fetchall()) == 400
        conn.execute("begin transaction")
        conn.execute("insert into t select range, 'new' from range(400000, 1400000)")
        conn.execute("select max(s) from t").fetchall()
        assert cached_bytes(path, "BASE_TABLE") <= allowance
        conn.execute("commit")
        assert conn.execute("select count(*) from t").fetchone() == (1400000,)
        assert conn.execute("select count(*), max(i) from kept").fetchone() == (3000000, 2999999)
        assert cached_bytes(path, "IN_MEMORY_TABLE") >= temporary
        host = attachments._attached[os.path.abspath(path)].host
        spilled = host.execute("select sum(temporary_storage_bytes) from duckdb_memory()")
        assert spilled.fetchone() == (0,)
        assert conn.execute("select current_setting('memory_limit')").fetchone() == default
    assert not Path(path + ".tmp").exists()


def test_file_blocks_are_left_cached_while_another_connection_is_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The limit is lowered only with one connection open: another one's statement could be
    running on the instance."""
    monkeypatch.setattr(attachments, "LOOK_AFTER_SECONDS", 0.0)
    path = str(tmp_path / "w.duckdb")
    text_table(path)
    with connect(path) as first, connect(path) as second:
        first.execute("select max(s) from t").fetchall()
        assert cached_bytes(path, "BASE_TABLE") > attachments.FILE_BLOCKS_KEPT_BYTES
        second.close()
        first.execute("select 1").fetchall()
        assert cached_bytes(path, "BASE_TABLE") <= attachments.FILE_BLOCKS_KEPT_BYTES


def test_short_statements_look_at_the_cache_every_so_many(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Looking costs a query: after a statement quicker than ``LOOK_AFTER_SECONDS``, only
    every ``LOOK_EVERY_STATEMENTS``-th one looks."""
    monkeypatch.setattr(attachments, "LOOK_AFTER_SECONDS", 3600.0)
    monkeypatch.setattr(attachments, "LOOK_EVERY_STATEMENTS", 3)
    path = str(tmp_path / "w.duckdb")
    text_table(path)
    with connect(path) as conn:
        conn.execute("select max(s) from t").fetchall()  # the first statement
        conn.execute("select 1").fetchall()
        assert cached_bytes(path, "BASE_TABLE") > attachments.FILE_BLOCKS_KEPT_BYTES
        conn.execute("select 1").fetchall()  # the third: it looks
        assert cached_bytes(path, "BASE_TABLE") <= attachments.FILE_BLOCKS_KEPT_BYTES


def test_a_connection_collected_while_another_one_opens_is_closed_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The collector can finalize a dropped connection at any allocation, in the middle of
    another connection's opening: the dropped one is closed once the opening is complete."""
    path = str(tmp_path / "w.duckdb")
    ident = attachments.ident

    def collecting(name: str) -> str:
        gc.collect()
        return ident(name)

    gc.disable()
    try:
        dropped = connect(path)
        cycle: list[object] = [dropped]
        cycle.append(cycle)  # reachable by nothing but the collector from here
        del dropped, cycle
        monkeypatch.setattr(attachments, "ident", collecting)
        conn = connect(path)
        monkeypatch.setattr(attachments, "ident", ident)
    finally:
        gc.enable()
    assert conn.execute("select current_database()").fetchall() == [("w",)]
    assert attachments._attached[os.path.abspath(path)].users == 1
    other = conn.cursor()  # another connection to the file, not to the instance's catalog
    assert other.execute("select current_database()").fetchall() == [("w",)]
    other.close()
    conn.close()
    assert _other_process_opens(Path(path)) == "opened"


def test_a_kept_instance_that_spilled_serves_its_file_again_and_another_file_gets_a_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step larger than memory spills to the file's ``.tmp`` directory; DuckDB then refuses
    to set an instance's temporary directory again, even to the same path. The next connection
    of the process (the rest of an in-process sync) must still open: on the same file the kept
    instance serves it as it is, on another file a new instance spills beside that file."""
    monkeypatch.setattr(attachments, "KEEP_BELOW_BYTES", 2**40)
    monkeypatch.setattr(attachments, "_idle", [])
    path, other = str(tmp_path / "w.duckdb"), str(tmp_path / "other.duckdb")
    conn = connect(path)
    host = attachments._attached[os.path.abspath(path)].host
    conn.execute("set threads = 1")
    conn.execute("set memory_limit = '30MB'")
    conn.execute(
        "create temp table big as select range r, md5(range::varchar) m from range(2000000)"
    )
    assert conn.execute("select count(*) from (select m from big order by m desc)").fetchone() == (
        2000000,
    )
    assert Path(path + ".tmp").exists()  # it spilled
    conn.execute("drop table big")
    conn.execute("reset memory_limit")
    conn.execute("reset threads")
    conn.close()
    assert [idle for idle, _ in attachments._idle] == [host]

    with connect(path) as again:  # the same file: the kept instance, its directory as it is
        assert attachments._attached[os.path.abspath(path)].host is host
        assert again.execute("select 1").fetchone() == (1,)
    with connect(other) as elsewhere:  # another file: an instance of its own
        served = attachments._attached[os.path.abspath(other)].host
        assert served is not host
        setting = elsewhere.execute("select current_setting('temp_directory')").fetchone()
        assert setting == (os.path.abspath(other) + ".tmp",)
