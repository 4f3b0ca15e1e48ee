"""Settling an ``unconfirmed`` bulk item needs evidence the attempt landed, not the key's
presence: Planhat's answer (ours emulated by the sandbox store, or in its documented
``_id``-only shape) -> ``reconcile_bulk`` -> ``planhat.deliveries`` -> a later snapshot ->
``settlement_inputs`` -> ``settle``."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from hull_planhat_pipelines.clients.planhat_outcomes import reconcile_bulk
from hull_planhat_pipelines.sandbox.planhat_store import PlanhatStore
from hull_planhat_pipelines.sync.planhat.fingerprints import fingerprint
from hull_planhat_pipelines.sync.planhat.records import endusers_frame
from hull_planhat_pipelines.sync.planhat.settlement import Settlement, settle
from hull_planhat_pipelines.warehouse.deliveries import settlement_inputs

T0 = dt.datetime(2026, 11, 1, 10, tzinfo=dt.UTC)  # an earlier delivery Planhat took
T1 = dt.datetime(2026, 11, 2, 10, tzinfo=dt.UTC)  # the bulk upsert left unconfirmed
T2 = dt.datetime(2026, 11, 3, 10, tzinfo=dt.UTC)  # the next snapshot


def _key(item: dict[str, Any]) -> str:
    if item.get("externalId"):
        return f"external_id:{item['externalId']}"
    return f"email:{item['email'].strip().lower()}"


def _warehouse(path: Path, history: list[tuple[Any, ...]], snapshot: list[dict[str, Any]]) -> str:
    conn = duckdb.connect(str(path))
    conn.execute("create schema planhat; create schema planhat_current")
    conn.execute(
        "create table planhat.deliveries (target varchar, key varchar, status varchar, "
        "fingerprint varchar, delivered_at timestamptz)"
    )
    conn.executemany("insert into planhat.deliveries values (?, ?, ?, ?, ?)", history)
    conn.register("_snapshot", endusers_frame(snapshot, fetched_at=T2))
    conn.execute("create table planhat_current.endusers as select * from _snapshot")
    conn.close()
    return str(path)


def _settle(database: str, items: list[dict[str, Any]]) -> Settlement:
    payloads = pd.DataFrame(
        {
            "key": [_key(i) for i in items],
            "fingerprint": [fingerprint(i) for i in items],
            "company_external_id": [i.get("companyExternalId") for i in items],
        }
    )
    known = settlement_inputs(
        database, "endusers", payloads["key"].tolist(), payloads["company_external_id"].tolist()
    )
    assert known is not None
    return settle(
        "endusers",
        payloads,
        known.history,
        known.present,
        known.snapshot_at,
        known.company_at,
        written_at=known.written_at,
    )


def test_an_update_planhat_did_not_apply_is_sent_again_not_confirmed(tmp_path: Path) -> None:
    """Carl's update shares a batch Planhat applied 1 of 2 of, naming it by ``_id`` only; the
    snapshot still holds Carl as he was. Bob, created by it, was written after the attempt."""
    carl_old = {"email": "carl@x.io", "position": "Engineer", "companyExternalId": "ACC-A"}
    carl_new = {"email": "carl@x.io", "position": "CTO", "companyExternalId": "ACC-NEW"}
    bob = {"email": "bob@x.io", "position": "Sales", "companyExternalId": "ACC-A"}
    items = [carl_new, bob]
    answer = {"created": 1, "insertsKeys": [{"_id": "ph-bob"}], "updated": 0, "updatesKeys": []}
    outcomes, _ = reconcile_bulk(items, answer, 200)
    assert [o.status for o in outcomes] == ["unconfirmed", "unconfirmed"]
    answered = T1 + dt.timedelta(seconds=3)  # the rows are written once the answer is in
    history = [
        ("endusers", "email:carl@x.io", "created", fingerprint(carl_old), T0),
        *[
            ("endusers", _key(i), o.status, fingerprint(i), answered)
            for i, o in zip(items, outcomes, strict=True)
        ],
    ]
    snapshot = [
        {
            "_id": "ph-carl",
            "email": "carl@x.io",
            "position": "Engineer",
            "companyId": "ph-A",
            "updatedAt": (T0 - dt.timedelta(seconds=1)).isoformat(),
        },
        {
            "_id": "ph-bob",
            "email": "bob@x.io",
            "position": "Sales",
            "companyId": "ph-A",
            "updatedAt": (T1 + dt.timedelta(seconds=2)).isoformat(),
        },
    ]
    result = _settle(_warehouse(tmp_path / "w.duckdb", history, snapshot), items)
    assert result.confirmed["key"].tolist() == ["email:bob@x.io"]
    assert result.not_applied["key"].tolist() == ["email:carl@x.io"]
    assert result.send["key"].tolist() == ["email:carl@x.io"]


def test_a_dropped_create_whose_email_other_companies_hold_is_sent_again(tmp_path: Path) -> None:
    """The sandbox's own rules: Ann's item names a company Planhat lacks, and two endusers of
    other companies hold her email, so it is a create, silently dropped. Her email is in the
    next snapshot all the same (theirs), written before the attempt."""
    clock = iter(T1 + dt.timedelta(seconds=i) for i in range(10_000))
    store = PlanhatStore(clock=lambda: next(clock))
    store.seed_records(
        "companies", [{"name": "A", "externalId": "ACC-A"}, {"name": "D", "externalId": "ACC-D"}]
    )
    store.seed_records(
        "endusers",
        [
            {"email": "ann@x.io", "position": "Old A", "companyExternalId": "ACC-A"},
            {"email": "ann@x.io", "position": "Old D", "companyExternalId": "ACC-D"},
        ],
    )
    attempt = T1 + dt.timedelta(hours=1)  # well after those were written
    store.clock = iter(attempt + dt.timedelta(seconds=i) for i in range(10_000)).__next__
    ann = {"email": "ann@x.io", "position": "CTO", "companyExternalId": "ACC-NEW"}
    bob = {"email": "bob@x.io", "position": "Sales", "companyExternalId": "ACC-A"}
    items = [ann, bob]
    answer = store.bulk_upsert("endusers", [dict(i) for i in items])
    outcomes, _ = reconcile_bulk(items, answer.body(), answer.status)
    assert [o.status for o in outcomes] == ["unconfirmed", "unconfirmed"]
    held = list(store.endusers.rows.values())
    assert not [e for e in held if e["email"] == "ann@x.io" and e.get("position") == "CTO"]
    answered = attempt + dt.timedelta(seconds=30)
    history = [
        ("endusers", _key(i), o.status, fingerprint(i), answered)
        for i, o in zip(items, outcomes, strict=True)
    ]
    result = _settle(_warehouse(tmp_path / "w.duckdb", history, held), items)
    assert result.confirmed["key"].tolist() == ["email:bob@x.io"]
    assert result.not_applied["key"].tolist() == ["email:ann@x.io"]


def test_an_email_planhat_keeps_as_typed_answers_to_our_key(tmp_path: Path) -> None:
    """Our keys hold emails trimmed and lower-cased; Planhat may keep ``Carl@X.io``."""
    carl = {"email": "carl@x.io", "position": "CTO", "companyExternalId": "ACC-A"}
    answered = T1 + dt.timedelta(seconds=3)
    history = [("endusers", "email:carl@x.io", "unconfirmed", fingerprint(carl), answered)]
    snapshot = [
        {
            "_id": "ph-carl",
            "email": " Carl@X.io",
            "position": "CTO",
            "companyId": "ph-A",
            "updatedAt": (T1 + dt.timedelta(seconds=1)).isoformat(),
        },
    ]
    result = _settle(_warehouse(tmp_path / "w.duckdb", history, snapshot), [carl])
    assert result.confirmed["key"].tolist() == ["email:carl@x.io"]
    assert result.send.empty
