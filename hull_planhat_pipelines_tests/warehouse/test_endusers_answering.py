"""Which profiles hold a Planhat enduser answering to a key being sent (``endusers_answering``).

The key is the one Planhat matches an upsert by: an enduser answering to it, held by a profile
outside the delivery, would be overwritten by it. Only an enduser one profile holds counts.
"""

from __future__ import annotations

import duckdb

from hull_planhat_pipelines.warehouse.deliveries import endusers_answering


def _warehouse() -> duckdb.DuckDBPyConnection:
    conn = duckdb.connect()
    for schema in ("planhat_current", "hull"):
        conn.execute(f"create schema {schema}")
    conn.execute(
        "create table planhat_current.endusers as select * from (values"
        " ('p-ann', null, ' Ann@X.io '),"  # Planhat keeps what it was given: trimmed, lowered
        " ('p-bob', 'ext-bob', 'bob@x.io'),"  # answers to both of its keys
        " ('p-cy', '  ', 'cy@x.io'),"  # a blank external id answers to nothing
        " ('p-dee', null, 'dee@x.io'),"  # two profiles hold it: nobody's alone
        " ('p-eve', null, 'eve@x.io'),"  # no profile holds it
        " ('p-fay', null, 'fay@x.io')) t(_id, external_id, email)"  # not a key being sent
    )
    conn.execute(
        "create table hull.users as select * from (values"
        " ('ann', ['copper-person:1', 'planhat:p-ann']), ('bob', ['planhat:p-bob']),"
        " ('cy', ['planhat:p-cy']), ('dee', ['planhat:p-dee']), ('dee-too', ['planhat:p-dee']),"
        " ('fay', ['planhat:p-fay']), ('gus', ['planhat:p-eve-not'])) t(hull_id, anonymous_ids)"
    )
    return conn


def test_each_profile_holding_an_enduser_that_answers_gets_every_key_it_answers_to() -> None:
    conn = _warehouse()
    keys = [
        "email:ann@x.io",
        "external_id:ext-bob",
        "email:cy@x.io",
        "external_id:",
        "email:dee@x.io",
        "email:eve@x.io",
        "email:nobody@x.io",
    ]
    assert endusers_answering(conn, keys) == {
        "ann": {"email:ann@x.io"},
        "bob": {"external_id:ext-bob", "email:bob@x.io"},
        "cy": {"email:cy@x.io"},
    }


def test_no_key_answered_no_store_or_no_keys_give_nothing() -> None:
    conn = _warehouse()
    assert endusers_answering(conn, ["email:nobody@x.io"]) == {}
    assert endusers_answering(conn, []) == {}
    assert endusers_answering(None, ["email:ann@x.io"]) == {}
    conn.execute("drop table hull.users")
    assert endusers_answering(conn, ["email:ann@x.io"]) == {}
