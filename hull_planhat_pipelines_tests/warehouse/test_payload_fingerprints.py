"""A payload step reads the fingerprints it compares with, not every one kept."""

from pathlib import Path

import duckdb

from hull_planhat_pipelines.sync.planhat.endusers import keys_of_users
from hull_planhat_pipelines.warehouse.deliveries import (
    FINGERPRINTS,
    FINGERPRINTS_DDL,
    fingerprints_of_keys,
    fingerprints_table,
)


def _warehouse(path: Path) -> duckdb.DuckDBPyConnection:
    conn = duckdb.connect(str(path))
    conn.execute("create schema hull; create schema planhat")
    conn.execute("create table hull.users (hull_id varchar, email varchar, external_id varchar)")
    conn.execute(
        "insert into hull.users values ('u1', 'ann@a.example', 'E1'), "
        "('u2', 'bob@b.example', ' '), ('u3', 'cy@c.example', null)"
    )
    for statement in filter(str.strip, FINGERPRINTS_DDL.split(";")):
        conn.execute(statement)
    conn.execute(
        f"insert into {FINGERPRINTS} (target, key) values ('endusers', 'external_id:E1'), "
        "('endusers', 'email:bob@b.example'), ('endusers', 'email:cy@c.example'), "
        "('companies', 'A1'), ('activities', 'e1')"
    )
    return conn


def test_enduser_fingerprints_of_the_users_in_scope_only(tmp_path: Path) -> None:
    conn = _warehouse(tmp_path / "w.duckdb")
    users = conn.execute("select * from hull.users where hull_id in ('u1', 'u2')").fetchdf()
    found = fingerprints_of_keys(conn, "endusers", set(keys_of_users(users).values()))
    # the key as payloads build it: external id first, a blank one does not count
    assert sorted(found["key"]) == ["email:bob@b.example", "external_id:E1"]
    every = fingerprints_of_keys(conn, "endusers", None)
    assert len(every) == 3


def test_a_payload_step_reads_its_targets_fingerprints(tmp_path: Path) -> None:
    conn = _warehouse(tmp_path / "w.duckdb")
    assert sorted(fingerprints_table(conn, ["companies", "activities"])["key"]) == ["A1", "e1"]
    assert len(fingerprints_table(conn)) == 5
