"""``planhat.delivery_fingerprints`` after a commit: a request's fresh fingerprints are
inserted, or replace the stored ones of their keys, keeping the Planhat ``_id`` stored before
when the answer named none. A small request updates the rows in place; a large one deletes and
inserts them (``REPLACED_FROM_ROWS``): both must leave the same table."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from hull_planhat_pipelines.warehouse import deliveries

BEFORE = dt.datetime(2024, 6, 1, 12, tzinfo=dt.UTC)
NOW = BEFORE + dt.timedelta(minutes=5)
STORED = 1_200  # keys email:0 .. email:1199, with Planhat ids, and one company


def _fresh(indexes: range, planhat_id: str | None = None) -> pd.DataFrame:
    keys = [f"email:u{i}@example.com" for i in indexes]
    return pd.DataFrame(
        {
            "target": ["endusers"] * len(keys),
            "key": keys,
            "fingerprint": [f"new-{i}" for i in indexes],
            "fields": ['["name"]'] * len(keys),
            "delivered_at": [pd.Timestamp(NOW)] * len(keys),
            "planhat_id": [planhat_id if i % 2 else f"ph-new-{i}" for i in indexes],
            "hull_id": [f"h-new-{i}" for i in indexes],
        }
    )


def _table_after(path: Path, fresh: pd.DataFrame) -> list[tuple]:
    with duckdb.connect(str(path)) as conn:
        deliveries._ensure_tables(conn)
        stored = _fresh(range(STORED)).assign(
            fingerprint="old",
            fields='["old"]',
            delivered_at=pd.Timestamp(BEFORE),
            planhat_id=[f"ph-{i}" for i in range(STORED)],
            hull_id=[f"h-{i}" for i in range(STORED)],
        )
        company = stored.head(1).assign(target="companies", key="acme", planhat_id="ph-acme")
        deliveries._upsert_fingerprints(conn, pd.concat([stored, company], ignore_index=True))
        conn.execute("begin transaction")
        deliveries._upsert_fingerprints(conn, fresh)
        conn.execute("commit")
        return conn.execute(
            "select target, key, fingerprint, fields, delivered_at, planhat_id, hull_id"
            " from planhat.delivery_fingerprints order by target, key"
        ).fetchall()


@pytest.mark.parametrize("size", [10, deliveries.REPLACED_FROM_ROWS])
def test_a_request_updates_its_keys_keeps_known_ids_and_adds_new_keys(
    tmp_path: Path, size: int
) -> None:
    # half of the keys stored before (odd ones answered without an _id), half new
    fresh = _fresh(range(STORED - size // 2, STORED - size // 2 + size))
    rows = {(r[0], r[1]): r for r in _table_after(tmp_path / "w.duckdb", fresh)}

    assert len(rows) == STORED + 1 + size - size // 2  # one row per key, none twice
    assert rows[("companies", "acme")][5] == "ph-acme"  # another target's key: untouched
    untouched = rows[("endusers", "email:u0@example.com")]
    assert untouched[2:4] == ("old", '["old"]') and untouched[5:] == ("ph-0", "h-0")
    for i in range(STORED - size // 2, STORED - size // 2 + size):
        row = rows[("endusers", f"email:u{i}@example.com")]
        assert row[2:4] == (f"new-{i}", '["name"]') and row[4] == NOW
        assert row[6] == f"h-new-{i}"  # the profile is the latest sender's
        if i % 2 == 0:
            assert row[5] == f"ph-new-{i}"  # the answer's _id
        else:  # no _id in the answer: the stored one, or none for a new key
            assert row[5] == (f"ph-{i}" if i < STORED else None)


def test_in_place_and_replaced_leave_the_same_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh = _fresh(range(STORED - 300, STORED + 300))
    in_place = _table_after(tmp_path / "in_place.duckdb", fresh)
    monkeypatch.setattr(deliveries, "REPLACED_FROM_ROWS", 1)
    replaced = _table_after(tmp_path / "replaced.duckdb", fresh)
    assert replaced == in_place
