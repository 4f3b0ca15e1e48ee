"""Records removed from Copper reach Hull through a log, not a comparison with the whole store:
a write logs what it removed, Hull reads only the profiles and events holding a logged id, and
forgets the ids it judged."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pandas as pd

from hull_planhat_pipelines.sync.hull.changes import StoreKeys
from hull_planhat_pipelines.warehouse import CopperSlice, hull_store, removals, write_copper_table
from hull_planhat_pipelines_tests.assets.test_hull_store import STORE_DDL

RANGE = CopperSlice(first=dt.date(2026, 1, 1), end=dt.date(2026, 2, 1))


def _people(ids: list[int]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": pd.Series(ids, dtype="int64"),
            "name": pd.Series([f"p{i}" for i in ids], dtype="string"),
            "partition_date": pd.Series([dt.date(2026, 1, 3)] * len(ids), dtype="object"),
            "_fetched_at": pd.Series([pd.Timestamp("2026-01-03", tz="UTC")] * len(ids)),
        }
    )


def _logged(database: str) -> list[tuple[str, str]]:
    with duckdb.connect(database) as conn:
        return conn.execute("select object, id from ops.copper_removals order by seq").fetchall()


def test_a_write_logs_the_ids_it_removed_once(tmp_path: Path) -> None:
    database = str(tmp_path / "w.duckdb")
    write_copper_table(database, "copper.people", _people([1, 2, 3]), RANGE)
    with duckdb.connect(database) as conn:  # nothing removed yet: no log at all
        assert removals.removed_ids(conn, "people") is None

    written = write_copper_table(database, "copper.people", _people([1, 3]), RANGE)
    assert written["changed"] == 1
    assert _logged(database) == [("people", "2")]

    # the same range again removes nothing more; an incremental write naming a gone id does
    write_copper_table(database, "copper.people", _people([1, 3]), RANGE)
    write_copper_table(
        database,
        "copper.people",
        _people([]),
        CopperSlice(first=RANGE.first, end=RANGE.first),
        gone_ids=[3],
    )
    assert _logged(database) == [("people", "2"), ("people", "3")]


def test_a_table_created_anew_has_the_store_judged_in_full_again(tmp_path: Path) -> None:
    """Dropped and fetched again: what left Copper meanwhile was never logged."""
    database = str(tmp_path / "w.duckdb")
    write_copper_table(database, "copper.people", _people([1]), RANGE)
    with duckdb.connect(database) as conn:
        conn.execute(
            "create schema ops; create table ops.hull_state (key varchar primary key, value varchar)"
        )
        removals.forget_judged(conn, 0)
        assert removals.judged_by_log(conn)
        conn.execute("drop table copper.people")
    write_copper_table(database, "copper.people", _people([1]), RANGE)
    with duckdb.connect(database) as conn:
        assert not removals.judged_by_log(conn)


def _store(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute(
        STORE_DDL + "create schema ops;"
        "create table ops.hull_state (key varchar primary key, value varchar);"
        # person 4 was removed, then came back; 2 and 3 are gone
        "create table copper.people as select 4::bigint as id union all select 5;"
        "create view copper_current.people as select * from copper.people;"
        "create table copper.activities as select 66::bigint as id;"
        "create view copper_current.activities as select * from copper.activities;"
        "insert into hull.users values"
        " ('u2', null, null, ['copper-person:2'], null, '{}', null, null, []),"
        " ('u3', null, null, ['copper-person:3'], null, '{}', null, null, []),"
        " ('u4', null, null, ['copper-person:4'], null, '{}', null, null, []),"
        " ('u5', null, null, ['copper-person:5'], null, '{}', null, null, []);"
        "insert into hull.events values"
        " ('ev55', 'u5', 'Note', '{}', null, 'copper', '55'),"
        " ('ev66', 'u5', 'Note', '{}', null, 'copper', '66'),"
        " ('ev77', 'u5', 'Note', '{}', null, 'copper', '77')"
    )
    for object_, ids in (("people", "(3), (4)"), ("activities", "(55), (66)")):
        conn.execute(f"create temp table _r as select * from (values {ids}) t(id)")
        removals.remember_removals(conn, object_, "_r")
        conn.execute("drop table _r")


NO_KEYS = StoreKeys(
    claims=pd.DataFrame({"kind": [], "claim": [], "value": []}, dtype=object),
    event_ids=pd.Series([], dtype=object),
    opportunities=False,
)


def test_a_store_judged_by_the_log_reads_only_what_the_log_names(tmp_path: Path) -> None:
    conn = duckdb.connect(str(tmp_path / "w.duckdb"))
    _store(conn)
    conn.execute("insert into ops.hull_state values ('copper_removals', 'judged')")

    part = hull_store.read_slice(conn, NO_KEYS)

    # u2's person was judged before the log (its group long cleared): not read again
    assert sorted(part.store.users["hull_id"]) == ["u3", "u4"]
    assert list(part.current_ids["people"]) == ["4"]  # 4 came back: u4 keeps its group
    assert sorted(part.store.events["event_id"]) == ["ev55", "ev66"]
    assert list(part.current_ids["activities"]) == ["66"]
    conn.close()


def test_a_store_never_judged_by_the_log_is_judged_in_full_once(tmp_path: Path) -> None:
    conn = duckdb.connect(str(tmp_path / "w.duckdb"))
    _store(conn)

    part = hull_store.read_slice(conn, NO_KEYS)

    assert sorted(part.store.users["hull_id"]) == ["u2", "u3"]
    assert sorted(part.store.events["event_id"]) == ["ev55", "ev77"]

    # the apply forgets what it read and judges by the log from then on; a removal logged
    # after its read stays for the next apply
    read_up_to = removals.horizon(conn)
    conn.execute("create temp table _r as select 9 as id")
    removals.remember_removals(conn, "people", "_r")
    removals.forget_judged(conn, read_up_to)
    assert removals.judged_by_log(conn)
    assert conn.execute("select object, id from ops.copper_removals").fetchall() == [
        ("people", "9")
    ]
    # numbers are not reused once the log empties: a later removal is never taken as judged
    removals.forget_judged(conn, removals.horizon(conn))
    removals.remember_removals(conn, "people", "_r")
    assert removals.horizon(conn) > read_up_to + 1
    conn.close()
