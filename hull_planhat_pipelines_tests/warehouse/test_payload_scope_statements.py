"""The payload scope selected statement by statement: the same profiles as one query chose,
read on the read-only connection a payload asset holds."""

from __future__ import annotations

from pathlib import Path

import duckdb

from hull_planhat_pipelines.settings import Settings, load_settings
from hull_planhat_pipelines.sync.hull.change_groups import STRUCTURAL
from hull_planhat_pipelines.warehouse import payload_scope
from hull_planhat_pipelines.warehouse.connection import read_only

USERS = [
    # hull_id, external_id, email, segments, account
    ("changed", None, "a@x.io", ["Customers"], "acme"),
    ("shares-email", None, "a@x.io", [], "other"),
    ("refused", "ext-r", "r@x.io", ["Customers"], "acme"),
    ("shares-external-id", "ext-r", None, [], "other"),
    ("taken", None, "t@x.io", ["Customers"], "acme"),
    ("unsettled", None, "u@x.io", ["Customers"], "acme"),
    ("never-sent", None, "n@x.io", ["Customers"], "acme"),
    ("waits-for-company", None, "w@x.io", ["Customers"], "unknown"),
    ("of-a-changed-account", None, "c@x.io", [], "moved"),
    ("current", None, "k@x.io", ["Customers"], "acme"),
]


def _settings() -> Settings:
    settings = load_settings()
    planhat = settings.planhat.model_copy(update={"contact_segments": ["Customers"]})
    return settings.model_copy(update={"planhat": planhat})


def _warehouse(path: Path, settings: Settings) -> None:
    conn = duckdb.connect(str(path))
    for schema in ("hull", "ops", "planhat"):
        conn.execute(f"create schema {schema}")
    conn.execute(
        "create table hull.users (hull_id varchar, external_id varchar, email varchar,"
        " segments varchar[], account_hull_id varchar)"
    )
    conn.executemany("insert into hull.users values (?, ?, ?, ?, ?)", USERS)
    conn.execute(
        "create table hull.accounts (hull_id varchar, external_id varchar, segments varchar[])"
    )
    conn.execute(
        "insert into hull.accounts values ('acme', 'acme-ext', []), ('unknown', 'nope', []),"
        " ('moved', 'moved-ext', []), ('other', null, [])"
    )
    conn.execute(
        "create table ops.hull_changes (kind varchar, hull_id varchar, grp varchar, seq bigint)"
    )
    conn.execute(
        "insert into ops.hull_changes values ('user', 'current', ?, 1),"
        " ('user', 'changed', ?, 2), ('account', 'moved', ?, 2)",
        [STRUCTURAL, STRUCTURAL, STRUCTURAL],
    )
    conn.execute(
        "create table planhat.delivery_fingerprints (target varchar, key varchar,"
        " fingerprint varchar)"
    )
    conn.execute(
        "insert into planhat.delivery_fingerprints values ('companies', 'acme-ext', 'c'),"
        " ('companies', 'moved-ext', 'm'), ('endusers', 'email:a@x.io', 'a'),"
        " ('endusers', 'external_id:ext-r', 'older'), ('endusers', 'email:t@x.io', 't'),"
        " ('endusers', 'email:u@x.io', 'u'), ('endusers', 'email:k@x.io', 'k'),"
        " ('endusers', 'email:c@x.io', 'c')"
    )
    for statement in payload_scope.SCOPE_DDL:
        conn.execute(statement)
    digest = payload_scope._digest(conn, settings, "endusers")
    conn.execute("insert into ops.payload_scope values ('endusers', 1, ?)", [digest])
    conn.execute(
        "insert into ops.payload_pending values"
        " ('endusers', 'refused', 'external_id:ext-r', 'sent-but-refused'),"
        " ('endusers', 'taken', 'email:t@x.io', 't'),"
        " ('endusers', 'unsettled', 'email:u@x.io', null)"
    )
    conn.close()


def test_the_scope_selected_in_steps_keeps_every_reason_and_the_key_sharers(
    tmp_path: Path,
) -> None:
    settings = _settings()
    database = tmp_path / "warehouse.duckdb"
    _warehouse(database, settings)

    with read_only(str(database)) as conn:
        assert conn is not None
        mapped = payload_scope.scope(conn, settings, "endusers", force=False)
        companies = payload_scope.scope(conn, settings, "companies", force=False)
        assert mapped.where is not None and mapped.seq == 2
        selected = {
            r[0]
            for r in conn.execute(f"select hull_id from hull.users where {mapped.where}").fetchall()
        }
        # the other target's scope, selected on the same connection, left this one as it was
        assert companies.target == "companies"
        again = conn.execute(f"select count(*) from hull.users where {mapped.where}").fetchall()

    assert selected == {
        "changed",  # rewritten since the scope last mapped
        "shares-email",  # shares the changed profile's key
        "refused",  # its fingerprint is not the one it was sent with
        "shares-external-id",
        "unsettled",  # pending without a fingerprint: mapped again
        "never-sent",  # in the segment, no fingerprint, its company known
        "of-a-changed-account",  # its companyExternalId comes from a rewritten account
    }
    assert again == [(len(selected),)]

    # what the read-only connection made was its own: nothing was written to the warehouse
    conn = duckdb.connect(str(database), read_only=True)
    try:
        tables = conn.execute(
            "select table_name from information_schema.tables where table_name like 'payload_s%'"
        ).fetchall()
    finally:
        conn.close()
    assert sorted(tables) == [("payload_scope",)]
