"""Which users returned to a key delivered long ago are sent again, with their Planhat
enduser's ``_id`` (``returned_to_keys``).

A user whose email went A -> B -> A has a fingerprint under ``email:A`` from the first
delivery; Planhat, updated by ``_id`` to B since, holds B. The payload under A is sent again
(to that enduser) only when a delivery to this user or to its enduser under another key came
after that fingerprint, the latest snapshot holds the user's own enduser under a key of this
user or enduser, and no other profile holds the enduser.
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
        " ('p-ann', null, 'Ann.B@x.io'), ('p-bob', null, 'bob.b@x.io'),"
        " ('p-cy', null, 'cy.b@x.io'), ('p-dee', null, 'dee.b@x.io'),"
        " ('p-eve', null, 'eve@x.io'), ('p-fay', null, 'fay.b@x.io'),"
        " ('p-gus', null, 'gus.b@x.io'), ('p-hal', null, 'someone@else.io'),"
        " ('p-ivy', 'ext-ivy', 'ivy@x.io')) t(_id, external_id, email)"
    )
    moment = "delivered_at::timestamptz as delivered_at" if delivered_at else "null as x"
    conn.execute(
        f"create table planhat.delivery_fingerprints as select 'endusers' as target, key,"
        f" {moment}, null::varchar as planhat_id, null::varchar as hull_id from (values ('email:ann@x.io', '{T0}'), ('email:ann.b@x.io', '{T1}'),"
        f" ('email:bob@x.io', '{T0}'), ('email:cy@x.io', '{T0}'), ('email:dee@x.io', '{T0}'),"
        f" ('email:eve@x.io', '{T2}'), ('email:gone@x.io', '{T0}'), ('email:fay@x.io', '{T0}'),"
        f" ('email:gus@x.io', '{T0}'), ('email:hal@x.io', '{T0}'), ('email:ivy@x.io', '{T0}'))"
        " t(key, delivered_at)"
    )
    conn.execute(
        "create table planhat.deliveries as select target, key, hull_id, status, planhat_id,"
        " delivered_at::timestamptz as delivered_at from (values"
        f" ('endusers', 'email:ann@x.io', 'ann', 'sent', null, '{T0}'),"
        f" ('endusers', 'email:ann.b@x.io', 'ann', 'updated', 'p-ann', '{T1}'),"
        f" ('endusers', 'email:bob.b@x.io', 'bob', 'error', null, '{T1}'),"
        f" ('endusers', 'email:cy.b@x.io', 'someone-else', 'updated', 'p-other', '{T1}'),"
        f" ('endusers', 'email:dee.b@x.io', 'dee', 'updated', 'p-dee', '{T1}'),"
        f" ('endusers', 'email:eve.b@x.io', 'eve', 'updated', 'p-eve', '{T1}'),"
        f" ('endusers', 'email:gone.b@x.io', 'gone', 'updated', 'p-gone', '{T1}'),"
        # fay's B went to her enduser under the profile she was merged from
        f" ('endusers', 'email:fay.b@x.io', 'fay-lead', 'updated', 'p-fay', '{T1}'),"
        f" ('endusers', 'email:gus.b@x.io', 'gus', 'unconfirmed', null, '{T1}'),"
        f" ('endusers', 'email:hal.b@x.io', 'hal', 'updated', 'p-hal', '{T1}'),"
        f" ('endusers', 'external_id:ext-ivy', 'ivy', 'updated', 'p-ivy', '{T1}')"
        ") t(target, key, hull_id, status, planhat_id, delivered_at)"
    )
    conn.execute(
        "create table hull.users as select * from (values"
        " ('ann', ['planhat:p-ann']), ('bob', ['planhat:p-bob']), ('cy', ['planhat:p-cy']),"
        " ('dee', ['planhat:p-dee']), ('dee-too', ['planhat:p-dee']),"
        " ('eve', ['planhat:p-eve']), ('gone', ['planhat:p-gone']), ('fay', ['planhat:p-fay']),"
        " ('gus', ['planhat:p-gus']), ('hal', ['planhat:p-hal']), ('ivy', ['planhat:p-ivy']))"
        " t(hull_id, anonymous_ids)"
    )
    return conn


CANDIDATES = pd.DataFrame(
    [
        ("ann", "email:ann@x.io", "p-ann"),  # A -> B (taken by its enduser) -> A
        ("bob", "email:bob@x.io", "p-bob"),  # B failed: Planhat still holds A
        ("cy", "email:cy@x.io", "p-cy"),  # B went to another profile's enduser
        ("dee", "email:dee@x.io", "p-dee"),  # another profile holds the enduser too
        ("eve", "email:eve@x.io", "p-eve"),  # A was delivered again after B: settled
        ("gone", "email:gone@x.io", "p-gone"),  # its enduser is not in the latest snapshot
        ("new", "email:new@x.io", "p-new"),  # never delivered at all
        ("fay", "email:fay@x.io", "p-fay"),  # B went to her enduser under another profile id
        ("gus", "email:gus@x.io", "p-gus"),  # B may have landed (unconfirmed)
        ("hal", "email:hal@x.io", "p-hal"),  # the enduser was edited to someone else's since
        ("ivy", "email:ivy@x.io", "p-ivy"),  # external id set, then removed
    ],
    columns=["hull_id", "key", "planhat_id"],
)


def test_only_a_key_left_for_another_key_of_its_own_enduser_is_sent_again() -> None:
    conn = _warehouse()
    found = returned_to_keys(conn, CANDIDATES)
    assert found.to_dict("records") == [
        {"hull_id": h, "key": f"email:{h}@x.io", "planhat_id": f"p-{h}", "other_keys": k}
        for h, k in [
            ("ann", ["email:ann.b@x.io"]),
            ("fay", ["email:fay.b@x.io"]),
            ("gus", ["email:gus.b@x.io"]),
            ("ivy", ["external_id:ext-ivy"]),
        ]
    ]
    # nothing is left behind on the connection
    assert not conn.execute(
        "select * from duckdb_tables() where table_name in ('_back', '_later')"
    ).fetchall()
    assert returned_to_keys(conn, CANDIDATES.iloc[0:0]).empty
    assert returned_to_keys(None, CANDIDATES).empty


def test_fingerprints_without_delivery_times_are_judged_as_before() -> None:
    """A table from before fingerprints kept their delivery time, or rows written before it:
    no key is judged returned."""
    assert returned_to_keys(_warehouse(delivered_at=False), CANDIDATES).empty
    conn = _warehouse()
    conn.execute("update planhat.delivery_fingerprints set delivered_at = null")
    assert returned_to_keys(conn, CANDIDATES).empty


def test_every_key_the_enduser_took_since_is_named() -> None:
    """A -> B -> C -> A: Planhat may hold fields B set and C never cleared; both are named."""
    conn = _warehouse()
    conn.execute(
        "insert into planhat.deliveries values ('endusers', 'email:ann.c@x.io', 'ann',"
        f" 'updated', 'p-ann', '{T2}')"
    )
    conn.execute("update planhat_current.endusers set email = 'ann.c@x.io' where _id = 'p-ann'")
    found = returned_to_keys(conn, CANDIDATES.iloc[[0]])
    assert found["other_keys"].tolist() == [["email:ann.b@x.io", "email:ann.c@x.io"]]


def test_an_address_taken_back_from_a_colleague_is_judged_by_the_profile_s_own_delivery() -> None:
    """Jo's address went to Jo's enduser (T0); Jo moved to jo.b while colleague Kim took the
    address (both T1: the key's fingerprint is Kim's now); Kim moved on and Jo takes it back.
    Jo's enduser holds jo.b, sent after Jo's own delivery of the address: sent by its ``_id``
    (by email, the item would land on Kim's enduser, which Planhat may still hold under it)."""
    conn = _warehouse()
    conn.execute(
        "insert into planhat_current.endusers values ('p-jo', null, 'jo.b@x.io'),"
        " ('p-kim', null, 'kim.moved@x.io')"
    )
    conn.execute(
        "insert into planhat.delivery_fingerprints values"
        f" ('endusers', 'email:jo@x.io', '{T1}', 'p-kim', 'kim')"
    )
    conn.execute(
        "insert into planhat.deliveries values"
        f" ('endusers', 'email:jo@x.io', 'jo', 'sent', null, '{T0}'),"
        f" ('endusers', 'email:jo.b@x.io', 'jo', 'updated', 'p-jo', '{T1}'),"
        f" ('endusers', 'email:jo@x.io', 'kim', 'updated', 'p-kim', '{T1}')"
    )
    conn.execute(
        "insert into hull.users values ('jo', ['planhat:p-jo']), ('kim', ['planhat:p-kim'])"
    )
    jo = pd.DataFrame([("jo", "email:jo@x.io", "p-jo")], columns=CANDIDATES.columns)
    assert returned_to_keys(conn, jo).to_dict("records") == [
        {
            "hull_id": "jo",
            "key": "email:jo@x.io",
            "planhat_id": "p-jo",
            "other_keys": ["email:jo.b@x.io"],
        }
    ]
