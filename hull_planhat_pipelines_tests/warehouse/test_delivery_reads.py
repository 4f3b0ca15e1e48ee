"""What a delivery reads before it sends is read for the records it sends, not for every record
ever delivered: the settlement inputs, the items left in flight, the keys in doubt."""

from pathlib import Path

import duckdb
import pandas as pd

from hull_planhat_pipelines.warehouse.deliveries import (
    FINGERPRINTS,
    FINGERPRINTS_DDL,
    in_doubt_keys,
    pending_keys,
    settlement_inputs,
)


def _warehouse(path: Path) -> str:
    conn = duckdb.connect(str(path))
    conn.execute("create schema planhat; create schema planhat_current")
    conn.execute(
        "create table planhat.deliveries (target varchar, key varchar, status varchar, "
        "fingerprint varchar, delivered_at timestamptz)"
    )
    conn.execute(
        "insert into planhat.deliveries values "
        "('endusers', 'email:a@x.io', 'sent', 'f0', '2026-11-01 10:00+00'),"
        "('endusers', 'email:a@x.io', 'unconfirmed', 'f1', '2026-11-02 10:00+00'),"
        "('endusers', 'email:b@x.io', 'dropped', 'f2', '2026-11-02 10:00+00'),"
        "('endusers', 'email:c@x.io', 'updated', 'f3', '2026-11-02 10:00+00'),"
        "('companies', 'email:a@x.io', 'dropped', 'f4', '2026-11-02 10:00+00')"
    )
    conn.execute(
        "create table planhat_current.endusers "
        "(external_id varchar, email varchar, _fetched_at timestamptz)"
    )
    conn.execute(
        "insert into planhat_current.endusers values "
        "(null, 'a@x.io', '2026-11-03 10:00+00'), ('E-9', 'z@x.io', '2026-11-03 10:00+00'),"
        "(null, 'b2@x.io', '2026-11-03 10:00+00')"
    )
    for statement in filter(str.strip, FINGERPRINTS_DDL.split(";")):
        conn.execute(statement)
    conn.execute(
        f"insert into {FINGERPRINTS} (target, key, delivered_at) values "
        "('companies', 'ACC-1', '2026-11-01 09:00+00'), ('companies', 'ACC-2', '2026-11-01 09:00+00')"
    )
    conn.close()
    return str(path)


def test_settling_reads_the_history_snapshot_and_companies_of_the_records_sent_only(
    tmp_path: Path,
) -> None:
    database = _warehouse(tmp_path / "w.duckdb")
    known = settlement_inputs(
        database, "endusers", ["email:a@x.io", "email:c@x.io", "email:new@x.io"], ["ACC-1"]
    )
    assert known is not None
    # every row of the unsettled keys among those sent (b's drop is not among them)
    assert sorted(zip(known.history["key"], known.history["status"], strict=True)) == [
        ("email:a@x.io", "sent"),
        ("email:a@x.io", "unconfirmed"),
    ]
    assert known.present == {"email:a@x.io"}  # not the snapshot's other endusers
    assert known.snapshot_at == pd.Timestamp("2026-11-03 10:00", tz="UTC")
    assert set(known.company_at) == {"ACC-1"}

    # none of the records sent is unsettled: nothing else is read
    assert settlement_inputs(database, "endusers", ["email:c@x.io"], ["ACC-2"]) is None
    assert settlement_inputs(database, "endusers", [], []) is None


def test_items_left_in_flight_are_looked_up_among_the_records_sent(tmp_path: Path) -> None:
    database = str(tmp_path / "w.duckdb")
    with duckdb.connect(database) as conn:
        conn.execute("create schema planhat")
        conn.execute(
            "create table planhat.deliveries (target varchar, key varchar, status varchar, "
            "delivered_at timestamptz)"
        )
        # every analytics item is recorded pending first; a crash leaves its latest pending
        conn.execute(
            "insert into planhat.deliveries values "
            "('activities', 'e1', 'pending', '2026-11-01 10:00+00'),"
            "('activities', 'e1', 'sent', '2026-11-01 10:00+00'),"
            "('activities', 'e2', 'pending', '2026-11-01 10:00+00'),"
            "('activities', 'e3', 'pending', '2026-11-01 10:00+00'),"
            "('metrics', 'e4', 'pending', '2026-11-01 10:00+00')"
        )
    assert pending_keys(database, "activities", ["e1", "e2", "e4", "e9"]) == {"e2"}
    assert pending_keys(database, "activities", []) == set()
    # a destination's creates, journaled as intents first: the keys it maps now only
    with duckdb.connect(database, read_only=True) as conn:
        assert in_doubt_keys(conn, "activities") == {"e2", "e3"}
        assert in_doubt_keys(conn, "activities", ["e1", "e3"]) == {"e3"}
        assert in_doubt_keys(conn, "activities", []) == set()
