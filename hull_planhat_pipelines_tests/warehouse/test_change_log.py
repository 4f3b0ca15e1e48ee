"""The change log and the pending payloads kept by a warehouse written before they had groups
and fingerprints: brought up to date, nothing read as unchanged that was not."""

from __future__ import annotations

import duckdb
import pandas as pd

from hull_planhat_pipelines.sync.hull.change_groups import STRUCTURAL
from hull_planhat_pipelines.warehouse import hull_store, payload_scope


def _ids(conn: duckdb.DuckDBPyConnection, sql: str) -> set[str]:
    return {r[0] for r in conn.execute(f"select hull_id from {sql}").fetchall()}


def test_an_ungrouped_log_becomes_structural_and_new_rewrites_are_grouped() -> None:
    conn = duckdb.connect()
    conn.execute("create schema ops")
    conn.execute(
        "create table ops.hull_changes (kind varchar, hull_id varchar, seq bigint,"
        " primary key (kind, hull_id))"
    )
    conn.execute("insert into ops.hull_changes values ('user', 'u1', 1), ('user', 'u2', 1)")
    # read before any new apply: every rewrite counts, whatever the groups asked
    assert _ids(conn, hull_store.changed_since(conn, "user", 0, {"copper"})) == {"u1", "u2"}

    seq = hull_store.log_changes(
        conn,
        {"user": pd.DataFrame({"hull_id": ["u2", "u3"], "grp": ["planhat", "copper_person"]})},
    )

    assert seq == 2
    rows = conn.execute("select kind, hull_id, grp, seq from ops.hull_changes order by all")
    assert rows.fetchall() == [
        ("user", "u1", STRUCTURAL, 1),
        ("user", "u2", STRUCTURAL, 1),
        ("user", "u2", "planhat", 2),
        ("user", "u3", "copper_person", 2),
    ]
    person = {STRUCTURAL, "copper_person"}
    assert _ids(conn, hull_store.changed_since(conn, "user", 0, person)) == {"u1", "u2", "u3"}
    assert _ids(conn, hull_store.changed_since(conn, "user", 1, person)) == {"u3"}
    assert _ids(conn, hull_store.changed_since(conn, "user", 1, {STRUCTURAL})) == set()


def test_a_keyed_log_loses_its_key_and_each_apply_keeps_one_row_per_profile_and_group() -> None:
    """A log written with a primary key (its index was loaded whole by every apply) keeps its
    rows without the key; an apply replaces the rows it rewrites and leaves the others."""
    conn = duckdb.connect()
    conn.execute("create schema ops")
    conn.execute(
        "create table ops.hull_changes (kind varchar, hull_id varchar, grp varchar,"
        " seq bigint, primary key (kind, hull_id, grp))"
    )
    conn.execute(
        "insert into ops.hull_changes values ('user', 'u1', 'copper_person', 1),"
        f" ('user', 'u1', '{STRUCTURAL}', 1), ('account', 'u1', 'copper', 1)"
    )

    seq = hull_store.log_changes(
        conn,
        {
            "user": pd.DataFrame(
                {"hull_id": ["u1", "u1", "u2"], "grp": ["copper_person", "planhat", "planhat"]}
            ),
        },
    )

    assert seq == 2
    keys = conn.execute(
        "select count(*) from duckdb_constraints() where table_name = 'hull_changes'"
        " and constraint_type = 'PRIMARY KEY'"
    ).fetchone()
    assert keys == (0,)
    rows = conn.execute("select kind, hull_id, grp, seq from ops.hull_changes order by all")
    assert rows.fetchall() == [
        ("account", "u1", "copper", 1),
        ("user", "u1", STRUCTURAL, 1),
        ("user", "u1", "copper_person", 2),
        ("user", "u1", "planhat", 2),
        ("user", "u2", "planhat", 2),
    ]
    assert (
        hull_store.log_changes(
            conn, {"user": pd.DataFrame({"hull_id": ["u2"], "grp": ["planhat"]})}
        )
        == 3
    )
    duplicated = conn.execute(
        "select count(*) from (select kind, hull_id, grp from ops.hull_changes"
        " group by all having count(*) > 1)"
    ).fetchone()
    assert duplicated == (0,)
    assert _ids(conn, hull_store.changed_since(conn, "user", 2, {"planhat"})) == {"u2"}


def test_pending_payloads_are_mapped_again_until_planhat_has_their_fingerprint() -> None:
    conn = duckdb.connect()
    conn.execute("create schema ops")
    conn.execute("create schema planhat")
    # a pending table from before fingerprints were kept: its rows are always mapped again
    conn.execute("create table ops.payload_pending (target varchar, hull_id varchar)")
    conn.execute("insert into ops.payload_pending values ('endusers', 'old')")
    conn.execute(
        "create table planhat.delivery_fingerprints (target varchar, key varchar,"
        " fingerprint varchar)"
    )
    assert _ids(conn, payload_scope.pending_not_taken(conn, "endusers")) == {"old"}

    scope = payload_scope.Scope("endusers", "true", 3, "digest")
    payloads = pd.DataFrame(
        {
            "hull_id": ["sent", "refused", "moved"],
            "key": ["email:a@x.io", "email:b@x.io", "email:c@x.io"],
            "fingerprint": ["f1", "f2", "f3"],
        }
    )
    payload_scope.remember(conn, scope, payloads)
    conn.execute(
        "insert into planhat.delivery_fingerprints values ('endusers', 'email:a@x.io', 'f1'),"
        " ('endusers', 'email:c@x.io', 'an older one')"
    )

    # delivered: current by its fingerprint; refused or overtaken: compared again
    assert _ids(conn, payload_scope.pending_not_taken(conn, "endusers")) == {"refused", "moved"}
