"""Which users returned to a key delivered long ago are sent again, with their Planhat
enduser's ``_id`` (``returned_to_keys``).

A user whose email went A -> B -> A has a fingerprint under ``email:A`` from the first
delivery; Planhat, updated by ``_id`` to B since, holds B. Only when a delivery for this same
user under another key came after that fingerprint, the latest snapshot holds the user's own
enduser, and no other profile holds it, is the payload under A sent again (to that enduser).
"""

from __future__ import annotations

import duckdb
import pandas as pd

from hull_planhat_pipelines.warehouse.deliveries import returned_to_keys

T0, T1, T2 = "2024-01-01 00:00:00+00", "2024-02-01 00:00:00+00", "2024-03-01 00:00:00+00"


def _warehouse(*, delivered_at: bool = True) -> duckdb.DuckDBPyConnection:
    conn = duckdb.connect()
    for schema in ("planhat_current", "planhat", "hull"):
        conn.execute(f"create schema {schema}")
    conn.execute(
        "create table planhat_current.endusers as select * from (values"
        " ('p-ann', 'ann.b@x.io'), ('p-bob', 'bob.b@x.io'), ('p-cy', 'cy.b@x.io'),"
        " ('p-dee', 'dee.b@x.io'), ('p-eve', 'eve@x.io')) t(_id, email)"
    )
    moment = "delivered_at::timestamptz as delivered_at" if delivered_at else "null as x"
    conn.execute(
        f"create table planhat.delivery_fingerprints as select 'endusers' as target, key, {moment}"
        " from (values ('email:ann@x.io', TIMESTAMP '2024-01-01'),"
        " ('email:ann.b@x.io', TIMESTAMP '2024-02-01'),"
        " ('email:bob@x.io', TIMESTAMP '2024-01-01'), ('email:cy@x.io', TIMESTAMP '2024-01-01'),"
        " ('email:dee@x.io', TIMESTAMP '2024-01-01'), ('email:eve@x.io', TIMESTAMP '2024-03-01'),"
        " ('email:gone@x.io', TIMESTAMP '2024-01-01')) t(key, delivered_at)"
    )
    conn.execute(
        "create table planhat.deliveries as select target, key, hull_id, status,"
        " delivered_at::timestamptz as delivered_at from (values"
        f" ('endusers', 'email:ann@x.io', 'ann', 'sent', '{T0}'),"
        f" ('endusers', 'email:ann.b@x.io', 'ann', 'updated', '{T1}'),"
        f" ('endusers', 'email:bob.b@x.io', 'bob', 'error', '{T1}'),"
        f" ('endusers', 'email:cy.b@x.io', 'someone-else', 'updated', '{T1}'),"
        f" ('endusers', 'email:dee.b@x.io', 'dee', 'updated', '{T1}'),"
        f" ('endusers', 'email:eve.b@x.io', 'eve', 'updated', '{T1}'),"
        f" ('endusers', 'email:gone.b@x.io', 'gone', 'updated', '{T1}')"
        ") t(target, key, hull_id, status, delivered_at)"
    )
    conn.execute(
        "create table hull.users as select * from (values"
        " ('ann', ['planhat:p-ann']), ('bob', ['planhat:p-bob']), ('cy', ['planhat:p-cy']),"
        " ('dee', ['planhat:p-dee']), ('dee-too', ['planhat:p-dee']),"
        " ('eve', ['planhat:p-eve']), ('gone', ['planhat:p-gone'])) t(hull_id, anonymous_ids)"
    )
    return conn


CANDIDATES = pd.DataFrame(
    [
        ("ann", "email:ann@x.io", "p-ann"),  # A -> B (taken by its enduser) -> A
        ("bob", "email:bob@x.io", "p-bob"),  # B was never taken: Planhat still holds A
        ("cy", "email:cy@x.io", "p-cy"),  # B was delivered, but for another profile
        ("dee", "email:dee@x.io", "p-dee"),  # another profile holds the enduser too
        ("eve", "email:eve@x.io", "p-eve"),  # A was delivered again after B: settled
        ("gone", "email:gone@x.io", "p-gone"),  # its enduser is not in the latest snapshot
        ("new", "email:new@x.io", "p-new"),  # never delivered at all
    ],
    columns=["hull_id", "key", "planhat_id"],
)


def test_only_a_key_left_for_another_delivered_key_of_its_own_enduser_is_sent_again() -> None:
    conn = _warehouse()
    assert returned_to_keys(conn, CANDIDATES) == {"ann": "p-ann"}
    # nothing is left behind on the connection
    assert not conn.execute("select * from duckdb_tables() where table_name = '_back'").fetchall()
    assert returned_to_keys(conn, CANDIDATES.iloc[0:0]) == {}
    assert returned_to_keys(None, CANDIDATES) == {}


def test_fingerprints_without_delivery_times_are_judged_as_before() -> None:
    """A table from before fingerprints kept their delivery time: no key is judged returned."""
    assert returned_to_keys(_warehouse(delivered_at=False), CANDIDATES) == {}
