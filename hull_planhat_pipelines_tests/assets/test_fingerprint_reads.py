"""Fingerprints that grow with the history, not the store: a metric's key carries its day (one
day's items more every day), and every activity a configured query sent keeps its key. The
payloads compare an answer with the fingerprints of its own keys only: history costs a cycle
nothing, and what reaches Planhat is the same. Copper and Planhat over real HTTP, as
``hull-planhat sync`` runs."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pytest

from hull_planhat_pipelines.assets import outgoing
from hull_planhat_pipelines.settings import load_settings
from hull_planhat_pipelines.sync.planhat.shared import ACTIVITIES, METRICS
from hull_planhat_pipelines_tests.assets.test_outgoing_assets import _started

DAYS_OF_HISTORY = 30


DAY = len("2024-01-01T00:00:00.000Z")
"""A metric key ends with its item's date."""


def _day(key: str) -> str:
    return key[-DAY:]


def _with_history(warehouse: Path, days: int) -> int:
    """Copy today's metric fingerprints to each of the ``days`` days before (the rows a daily
    metric leaves behind); returns how many metric fingerprints are stored then."""
    with duckdb.connect(str(warehouse)) as conn:
        today = conn.execute(
            "select * from planhat.delivery_fingerprints where target = ?", [METRICS]
        ).fetchdf()
        earlier = []
        for back in range(1, days + 1):
            shift = dt.timedelta(days=back)
            frame = today.copy()
            frame["key"] = [
                k[:-DAY]
                + (dt.datetime.fromisoformat(_day(k)) - shift).strftime("%Y-%m-%dT%H:%M:%S.000Z")
                for k in frame["key"]
            ]
            frame["delivered_at"] = frame["delivered_at"] - shift
            earlier.append(frame)
        conn.register("_earlier", pd.concat(earlier, ignore_index=True))
        conn.execute("insert into planhat.delivery_fingerprints by name select * from _earlier")
        return conn.execute(
            "select count(*) from planhat.delivery_fingerprints where target = ?", [METRICS]
        ).fetchall()[0][0]


def test_metric_payloads_compare_today_s_keys_not_every_day_ever_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _started(tmp_path) as stack:
        stack.cycle()
        metric = load_settings(stack.config).planhat.metrics[0]
        today = {
            key
            for (key,) in stack.query(
                "select key from planhat.delivery_fingerprints where target = ?", [METRICS]
            )
        }
        assert today and len({_day(k) for k in today}) == 1, "the first cycle sent one day"
        stored = _with_history(stack.warehouse, DAYS_OF_HISTORY)
        assert stored == len(today) * (DAYS_OF_HISTORY + 1)

        # one open opportunity's value changes: its company's metric, and nothing else, is sent
        values = dict(stack.query(metric.sql))
        opportunity = next(
            o
            for o in stack.copper.records("opportunities")
            if o.get("status") == "Open"
            and o.get("company_id") is not None
            and o.get("monetary_value")
            and stack.query(
                "select external_id from hull.accounts where external_id is not null and"
                " list_contains(anonymous_ids, ?)",
                [f"copper:{o['company_id']}"],
            )
        )
        [(external_id,)] = stack.query(
            "select external_id from hull.accounts where list_contains(anonymous_ids, ?)",
            [f"copper:{opportunity['company_id']}"],
        )
        stack.copper.edit(
            "opportunities",
            opportunity["id"],
            {"monetary_value": opportunity["monetary_value"] + 1000},
        )

        asked: list[tuple[str, set[str] | None]] = []
        whole: list[Collection[str] | None] = []
        of_keys, table = outgoing.deliveries.fingerprints_of_keys, outgoing.fingerprints_table

        def keys_spy(conn: Any, target: str, keys: Collection[str] | None) -> Any:
            asked.append((target, None if keys is None else set(keys)))
            return of_keys(conn, target, keys)

        def table_spy(conn: Any, targets: Collection[str] | None = None) -> Any:
            whole.append(targets)
            return table(conn, targets)

        monkeypatch.setattr(outgoing.deliveries, "fingerprints_of_keys", keys_spy)
        monkeypatch.setattr(outgoing, "fingerprints_table", table_spy)
        sent_before = len(stack.planhat.dimension_data)
        stack.cycle()

        # today's keys at most, never the history's; and of today's, only the key of the row
        # whose value changed: the rows sent unchanged were left out before the builder
        [changed] = [k for k in today if f":{external_id}:" in k]
        assert [keys for target, keys in asked if target == METRICS] == [{changed}]
        assert not [t for t in whole if t is None or METRICS in t]
        sent = stack.planhat.dimension_data[sent_before:]
        assert [(d["externalId"], d["value"]) for d in sent] == [
            (external_id, pytest.approx(float(values[external_id]) + 1000))
        ]
        assert {_day(k) for k in today} == {sent[0]["date"]}


NOTES_QUERY = (
    "select e.event_id as activity_id, 'Note taken' as action, u.email"
    " from hull.events e join hull.users u on u.hull_id = e.user_hull_id"
    " where e.name = 'Note' and u.email is not null"
)


def _notes_query(config: dict[str, Any]) -> None:
    config["planhat"]["activity_queries"] = [{"name": "notes", "sql": NOTES_QUERY}]


def test_activity_queries_compare_their_answer_s_keys_not_every_activity_ever_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _started(tmp_path, _notes_query) as stack:
        stack.cycle()
        answered = {f"sql:notes:{row[0]}" for row in stack.query(NOTES_QUERY)}
        assert answered, "the seed has notes"
        sent = {
            key
            for (key,) in stack.query(
                "select key from planhat.delivery_fingerprints"
                " where target = ? and starts_with(key, 'sql:')",
                [ACTIVITIES],
            )
        }
        assert sent == answered
        landed = len([a for a in stack.planhat.activities if a["action"] == "Note taken"])
        assert landed  # Planhat keeps those whose enduser it has, and drops the rest
        # what a query over recent days leaves behind: activities it sent and answers no more
        with duckdb.connect(str(stack.warehouse)) as conn:
            conn.execute(
                "insert into planhat.delivery_fingerprints (target, key, fingerprint)"
                " select ?, 'sql:notes:gone-' || i, md5(i::varchar) from range(5000) t(i)",
                [ACTIVITIES],
            )

        asked: list[set[str]] = []
        read = outgoing.deliveries.fingerprints_of_keys

        def spy(conn: Any, target: str, keys: Collection[str] | None) -> Any:
            if target == ACTIVITIES:
                asked.append(set(keys or ()))
            return read(conn, target, keys)

        monkeypatch.setattr(outgoing.deliveries, "fingerprints_of_keys", spy)
        stack.cycle()

        assert asked and all(answered <= keys for keys in asked)
        assert not [k for keys in asked for k in keys if k.startswith("sql:notes:gone-")]
        again = len([a for a in stack.planhat.activities if a["action"] == "Note taken"])
        assert again == landed  # each sent once
