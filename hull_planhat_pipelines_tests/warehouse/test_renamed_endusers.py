"""Which renamed users are sent with their Planhat enduser's ``_id`` (``held_under_other_keys``).

Only a user whose key is new, whose Planhat enduser the latest snapshot holds under a key we
delivered for this same user, and whose enduser no other profile holds: anything looser
could address (and overwrite) another person's enduser.
"""

from __future__ import annotations

import duckdb
import pandas as pd

from hull_planhat_pipelines.warehouse.deliveries import held_under_other_keys


def _warehouse() -> duckdb.DuckDBPyConnection:
    conn = duckdb.connect()
    for schema in ("planhat_current", "planhat", "hull"):
        conn.execute(f"create schema {schema}")
    conn.execute(
        "create table planhat_current.endusers as select * from (values"
        " ('p-ann', null, 'Ann@X.io'), ('p-bob', null, 'bob@x.io'),"
        " ('p-cy', 'ext-cy', 'cy@x.io'), ('p-dee', null, 'dee@x.io'),"
        " ('p-eve', null, 'eve@x.io')) t(_id, external_id, email)"
    )
    conn.execute(
        "create table planhat.delivery_fingerprints as select 'endusers' as target, key"
        " from (values ('email:ann@x.io'), ('email:bob@x.io'), ('external_id:ext-cy'),"
        " ('email:dee@x.io'), ('email:eve@x.io'), ('email:new-eve@x.io')) t(key)"
    )
    conn.execute(
        "create table planhat.deliveries as select * from (values"
        " ('endusers', 'email:ann@x.io', 'ann', 'sent'),"
        " ('endusers', 'email:bob@x.io', 'someone-else', 'updated'),"
        " ('endusers', 'external_id:ext-cy', 'cy', 'created'),"
        " ('endusers', 'email:dee@x.io', 'dee', 'sent'),"
        " ('endusers', 'email:eve@x.io', 'eve', 'error')) t(target, key, hull_id, status)"
    )
    conn.execute(
        "create table hull.users as select * from (values"
        " ('ann', ['planhat:p-ann']), ('bob', ['planhat:p-bob']), ('cy', ['planhat:p-cy']),"
        " ('dee', ['planhat:p-dee']), ('dee-too', ['planhat:p-dee']),"
        " ('eve', ['planhat:p-eve'])) t(hull_id, anonymous_ids)"
    )
    return conn


def test_only_a_renamed_user_whose_own_enduser_planhat_holds_is_addressed_by_its_id() -> None:
    candidates = pd.DataFrame(
        [
            ("ann", "email:ann.new@x.io", "p-ann"),  # renamed; its own key, any case in Planhat
            ("bob", "email:bob.new@x.io", "p-bob"),  # the old key was delivered for another
            ("cy", "email:cy@x.io", "p-cy"),  # lost its external id: Planhat holds it by that
            ("dee", "email:dee.new@x.io", "p-dee"),  # another profile holds the enduser too
            ("eve", "email:new-eve@x.io", "p-eve"),  # the new key was delivered already
            ("zed", "email:zed@x.io", "p-gone"),  # not in the latest snapshot
        ],
        columns=["hull_id", "key", "planhat_id"],
    )
    conn = _warehouse()
    assert held_under_other_keys(conn, candidates).to_dict("records") == [
        {
            "hull_id": "ann",
            "key": "email:ann.new@x.io",
            "planhat_id": "p-ann",
            "other_keys": ["email:ann@x.io"],
        },
        {
            "hull_id": "cy",
            "key": "email:cy@x.io",
            "planhat_id": "p-cy",
            "other_keys": ["external_id:ext-cy"],
        },
    ]
    # nothing is left behind on the connection
    assert not conn.execute("select * from duckdb_tables() where table_name = '_held'").fetchall()
    assert held_under_other_keys(conn, candidates.iloc[0:0]).empty
    assert held_under_other_keys(None, candidates).empty
