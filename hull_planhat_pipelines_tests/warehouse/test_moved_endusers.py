"""Which users moved to another company are sent with their Planhat enduser's ``_id``
(``held_in_other_companies``): only one whose own enduser the latest snapshot holds under the
payload's key in another company, and whose enduser no other profile holds."""

from __future__ import annotations

import duckdb
import pandas as pd

from hull_planhat_pipelines.warehouse.deliveries import held_in_other_companies


def _warehouse() -> duckdb.DuckDBPyConnection:
    conn = duckdb.connect()
    for schema in ("planhat_current", "hull"):
        conn.execute(f"create schema {schema}")
    conn.execute(
        "create table planhat_current.companies as select * from (values"
        " ('pc-a', 'ACC-A'), ('pc-b', 'ACC-B')) t(_id, external_id)"
    )
    conn.execute(
        "create table planhat_current.endusers as select * from (values"
        " ('p-ann', null, 'Ann@X.io', 'pc-a'), ('p-bob', null, 'bob@x.io', 'pc-b'),"
        " ('p-cy', null, 'cy@x.io', 'pc-a'), ('p-dee', null, 'dee@x.io', 'pc-a'),"
        " ('p-eve', null, 'eve@x.io', 'pc-gone'), ('p-fay', 'ext-fay', 'fay@x.io', 'pc-a'),"
        " ('p-fay-b', ' ext-fay', 'fay.b@x.io', 'pc-b'))"
        " t(_id, external_id, email, company_id)"
    )
    conn.execute(
        "create table hull.users as select * from (values"
        " ('ann', ['planhat:p-ann']), ('bob', ['planhat:p-bob']), ('cy', ['planhat:p-cy']),"
        " ('dee', ['planhat:p-dee']), ('dee-too', ['planhat:p-dee']),"
        " ('eve', ['planhat:p-eve']), ('fay', ['planhat:p-fay'])) t(hull_id, anonymous_ids)"
    )
    return conn


def test_only_a_user_whose_own_enduser_is_held_in_another_company_is_addressed_by_id() -> None:
    candidates = pd.DataFrame(
        [
            ("ann", "email:ann@x.io", "p-ann", "ACC-B"),  # moved; any case in Planhat
            ("bob", "email:bob@x.io", "p-bob", "ACC-B"),  # where Planhat holds it already
            ("cy", "email:cy.new@x.io", "p-cy", "ACC-B"),  # another key: not this enduser's
            ("dee", "email:dee@x.io", "p-dee", "ACC-B"),  # another profile holds it too
            ("eve", "email:eve@x.io", "p-eve", "ACC-B"),  # held in a company Planhat lost
            ("zed", "email:zed@x.io", "p-gone", "ACC-B"),  # not in the latest snapshot
            ("fay", "external_id:ext-fay", "p-fay", "ACC-B"),  # ACC-B holds one under it
        ],
        columns=["hull_id", "key", "planhat_id", "company_external_id"],
    )
    conn = _warehouse()
    assert held_in_other_companies(conn, candidates) == {"ann": "p-ann", "eve": "p-eve"}
    assert not conn.execute("select * from duckdb_tables() where table_name = '_moving'").fetchall()
    assert held_in_other_companies(conn, candidates.iloc[0:0]) == {}
    assert held_in_other_companies(None, candidates) == {}
