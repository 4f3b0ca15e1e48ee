"""The activity payloads read the tracked events not sent yet of in-segment users, and those
users, not the store."""

from pathlib import Path

import duckdb

from hull_planhat_pipelines.sync.planhat.shared import ACTIVITIES
from hull_planhat_pipelines.warehouse.activity_inputs import activity_inputs
from hull_planhat_pipelines.warehouse.deliveries import (
    FINGERPRINTS,
    FINGERPRINTS_DDL,
    fingerprints_of_keys,
)


def _warehouse(path: Path) -> duckdb.DuckDBPyConnection:
    conn = duckdb.connect(str(path))
    conn.execute("create schema hull; create schema planhat")
    conn.execute("create table hull.accounts (hull_id varchar, external_id varchar)")
    conn.execute("insert into hull.accounts values ('a1', 'A1'), ('a2', 'A2')")
    conn.execute(
        "create table hull.users (hull_id varchar, account_hull_id varchar, segments varchar[])"
    )
    conn.execute(
        "insert into hull.users values ('u1', 'a1', ['Customers']), ('u2', 'a2', ['Customers']),"
        " ('u3', null, ['Customers']), ('u4', 'a2', ['Leads']), ('u5', 'a2', null)"
    )
    conn.execute("create table hull.events (event_id varchar, user_hull_id varchar, name varchar)")
    conn.execute(
        "insert into hull.events values ('e1', 'u1', 'Meeting'), ('e2', 'u2', 'Meeting'), "
        "('e3', 'u2', 'Note'), ('e4', 'u3', null), ('e5', 'u1', 'Phone Call'),"
        # users outside the segments, or unknown: counted, not read
        " ('e6', 'u4', 'Meeting'), ('e7', 'u5', 'Meeting'), ('e8', 'u9', 'Meeting'),"
        " ('e9', null, 'Meeting')"
    )
    for statement in filter(str.strip, FINGERPRINTS_DDL.split(";")):
        conn.execute(statement)
    conn.execute(
        f"insert into {FINGERPRINTS} (target, key) values "
        "('activities', 'e2'), ('endusers', 'e1')"  # another target's key is not a sent event
    )
    return conn


def test_only_unsent_tracked_events_and_their_users_are_read(tmp_path: Path) -> None:
    conn = _warehouse(tmp_path / "w.duckdb")
    found = activity_inputs(conn, ["Meeting", "Phone Call"], ["Customers"])
    assert found is not None
    assert sorted(found.events["event_id"]) == ["e1", "e5"]
    assert list(found.users["hull_id"]) == ["u1"]
    assert list(found.accounts["hull_id"]) == ["a1"]
    assert found.left_out == {
        "events": 7,
        "not_tracked": 2,
        "already_sent": 1,
        "not_in_segment": 4,
    }
    # a user who enters a segment: its unsent events are read
    conn.execute("update hull.users set segments = ['Leads', 'Customers'] where hull_id = 'u4'")
    found = activity_inputs(conn, ["Meeting", "Phone Call"], ["Customers"])
    assert found is not None
    assert sorted(found.events["event_id"]) == ["e1", "e5", "e6"]


def test_before_any_delivery_every_tracked_event_is_read(tmp_path: Path) -> None:
    conn = _warehouse(tmp_path / "w.duckdb")
    conn.execute(f"drop table {FINGERPRINTS}")
    found = activity_inputs(conn, ["Meeting"], ["Customers"])
    assert found is not None
    assert sorted(found.events["event_id"]) == ["e1", "e2"]
    assert sorted(found.users["hull_id"]) == ["u1", "u2"]
    assert found.left_out == {
        "events": 7,
        "not_tracked": 3,
        "already_sent": 0,
        "not_in_segment": 4,
    }


def test_nothing_is_read_before_hull_has_tables(tmp_path: Path) -> None:
    empty = duckdb.connect(str(tmp_path / "empty.duckdb"))
    assert activity_inputs(empty, ["Meeting"], ["Customers"]) is None
    assert activity_inputs(None, ["Meeting"], ["Customers"]) is None


def test_a_payload_run_reads_the_fingerprints_of_its_candidates_not_of_every_sent_event(
    tmp_path: Path,
) -> None:
    conn = _warehouse(tmp_path / "w.duckdb")
    conn.execute(
        f"insert into {FINGERPRINTS} (target, key) values ('activities', 'e1'), "
        "('activities', 'sql:calls:7'), ('activities', 'sql:calls:8'), ('activities', 'e100')"
    )
    found = fingerprints_of_keys(conn, ACTIVITIES, {"e1", "e5"})
    assert sorted(found["key"]) == ["e1"]  # not e2 or e100, sent long ago; no other target's
    with_queries = fingerprints_of_keys(conn, ACTIVITIES, {"e5", "sql:calls:7"})
    # a query's activity sent long ago (sql:calls:8) is not read either
    assert sorted(with_queries["key"]) == ["sql:calls:7"]
    assert fingerprints_of_keys(conn, ACTIVITIES, set()).empty  # nothing asked: none
    assert fingerprints_of_keys(None, ACTIVITIES, {"e1"}).empty  # no warehouse yet
