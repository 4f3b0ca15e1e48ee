"""A metric answers for every record each cycle; the rows whose item was sent exactly so last
time are left out in SQL, before the builder maps and fingerprints the rest in Python. What
reaches Planhat, and what the builder reports, must not change: every row left out is one the
builder would have found unchanged, and each is counted so."""

from __future__ import annotations

import datetime as dt

import duckdb
import pandas as pd
import pytest

from hull_planhat_pipelines.clients.delivery import OUTCOME_COLUMNS
from hull_planhat_pipelines.settings import MetricSettings
from hull_planhat_pipelines.sync.planhat.metrics import METRIC_DUPLICATE, all_metric_payloads
from hull_planhat_pipelines.sync.planhat.shared import NO_EXTERNAL_ID, QueryAnswer
from hull_planhat_pipelines.warehouse import planhat_queries
from hull_planhat_pipelines.warehouse.deliveries import FINGERPRINTS, FINGERPRINTS_DDL
from hull_planhat_pipelines.warehouse.planhat_queries import metric_answers, without_unchanged
from hull_planhat_pipelines_tests.planhat_support import advance_fingerprints

NOW = dt.datetime(2024, 3, 2, 12, 30, tzinfo=dt.UTC)

VALUES = (
    "(values ('A1', 1::double), ('A2', 0.1), ('A3', 1e-05), ('A4', 1234.56), ('A5', 1e21),"
    " ('A6', -0.0), ('A7', 2.5e-300), ('A8', 1.2345678e-06), ('A9', 123456789.123),"
    " ('é', 3), ('a \"quoted\" id', 4), ('slash/back\\slash', 5), ('tab\there', 6),"
    " ('A10', 2^60 + 1)) v(external_id, value)"
)
"""Numbers and ids in the forms a metric gives: integral and not, tiny and huge, text that
JSON escapes."""

METRICS_OF_EVERY_FORM = [
    MetricSettings(dimension_id="doubles", sql=f"select * from {VALUES}"),
    MetricSettings(
        dimension_id="integers",
        model="EndUser",
        sql="select 'U' || i as external_id, (i * 1000003)::bigint as value from range(50) t(i)",
    ),
    MetricSettings(
        dimension_id="decimals",
        sql="select 'D' || i as external_id, (i / 7)::decimal(18, 2) as value from range(20) t(i)",
    ),
    MetricSettings(
        dimension_id="days",
        sql="select 'D' || i as external_id, i as value,"
        " case when i % 5 <> 0 then date '2024-01-01' + i::int end as date from range(20) t(i)",
    ),
    MetricSettings(
        dimension_id="moments",
        sql="select 'M' || i as external_id, i / 3 as value,"
        " timestamptz '2024-01-01 10:00:00.123456+02' + to_minutes(i) as date from range(20) t(i)",
    ),
    MetricSettings(
        dimension_id="local_moments",
        sql="select 'L' || i as external_id, i as value,"
        " timestamp '2024-01-01 23:59:59.999999' + to_hours(i) as date from range(20) t(i)",
    ),
]


def _delivered(conn: duckdb.DuckDBPyConnection, metrics: list[MetricSettings]) -> pd.DataFrame:
    """Build the metrics' payloads from their answers and store their fingerprints as a
    delivery Planhat accepted in full does; returns the payloads."""
    payloads, _ = all_metric_payloads(metric_answers(conn, metrics), NOW)
    outcomes = pd.DataFrame(
        {"target": payloads["target"], "key": payloads["key"], "status": "updated"},
        columns=OUTCOME_COLUMNS,
    )
    fingerprints = advance_fingerprints(None, outcomes, payloads, NOW)
    conn.execute("create schema if not exists planhat")
    conn.execute(FINGERPRINTS_DDL)
    conn.register("_fingerprints", fingerprints)
    conn.execute(f"insert into {FINGERPRINTS} by name select * from _fingerprints")
    conn.unregister("_fingerprints")
    return payloads


def _built(
    answers: list[tuple[MetricSettings, QueryAnswer]], stored: pd.DataFrame
) -> tuple[list[dict], list[tuple], list[dict]]:
    """What the builder makes of ``answers``: the items it sends, its skips, its progress."""
    payloads, events = all_metric_payloads(answers, NOW, fingerprints=stored)
    skips = [(e.event, e.object_id, e.reason) for e in events if e.event.endswith(".skip")]
    return list(payloads["payload"]), skips, [e.details for e in events if "progress" in e.event]


def test_every_row_sent_unchanged_is_left_out_and_counted() -> None:
    """SQL writes each of these items byte for byte as the builder did: a second cycle hands
    the builder no row, and the builder reports every row unchanged."""
    conn = duckdb.connect()
    sent = _delivered(conn, METRICS_OF_EVERY_FORM)
    answers = metric_answers(conn, METRICS_OF_EVERY_FORM)
    left = without_unchanged(conn, answers, NOW)

    assert [(m.dimension_id, len(a.rows), a.unchanged) for m, a in left] == [
        (m.dimension_id, 0, len(a.rows)) for m, a in answers
    ]
    assert sum(a.unchanged for _, a in left) == len(sent)
    stored = conn.execute(f"select * from {FINGERPRINTS}").fetchdf()
    assert _built(left, stored) == _built(answers, stored)
    payloads, events = all_metric_payloads(left, NOW, fingerprints=stored)
    assert payloads.empty
    progress = {
        e.details["dimension_id"]: e.details for e in events if e.event.endswith("progress")
    }
    for metric, answer in answers:
        assert progress[metric.dimension_id] == {
            "dimension_id": metric.dimension_id,
            "model": metric.model,
            "rows": len(answer.rows),
            "skipped": 0,
            "unchanged": len(answer.rows),
            "selected": 0,
        }


def test_only_rows_the_builder_must_judge_are_handed_to_it() -> None:
    """A changed value, a new record, a key two rows share (one of them as sent), a row
    without an id and one without a number reach the builder, which sends the first two and
    reports the rest as before; the rows sent unchanged are counted as such."""
    conn = duckdb.connect()
    conn.execute(
        "create table t as select * from (values ('A1', 1.5), ('A2', 2.0), ('A3', 3.0),"
        " ('A4', 4.0)) v(external_id, value)"
    )
    metric = MetricSettings(dimension_id="pipeline", sql="select * from t")
    _delivered(conn, [metric])
    conn.execute(
        "create or replace table t as select * from (values ('A1', 1.5), ('A2', 2.5),"
        " ('A3', 3.0), ('A3', 3.5), ('A4', 4.0), ('A5', 5.0), (null, 6.0), ('A6', null))"
        " v(external_id, value)"
    )
    answers = metric_answers(conn, [metric])
    [(_, answer)] = without_unchanged(conn, answers, NOW)

    # A1 and A4 as sent; A3 as sent too, but a second row has its key
    assert answer.unchanged == 2
    assert answer.rows["external_id"].tolist() == ["A2", "A3", "A3", "A5", None, "A6"]
    assert answer.rows["value"].fillna(-1).tolist() == [2.5, 3.0, 3.5, 5.0, 6.0, -1]
    stored = conn.execute(f"select * from {FINGERPRINTS}").fetchdf()
    assert _built([(metric, answer)], stored) == _built(answers, stored)
    payloads, events = all_metric_payloads([(metric, answer)], NOW, fingerprints=stored)
    assert [(p["externalId"], p["value"]) for p in payloads["payload"]] == [
        ("A2", 2.5),
        ("A5", 5.0),
    ]
    skips = sorted((e.object_id or "", e.reason) for e in events if e.event.endswith(".skip"))
    assert skips == [
        ("", NO_EXTERNAL_ID),
        ("A3", METRIC_DUPLICATE),
        ("A6", "Value is not a number"),
    ]
    [progress] = [e.details for e in events if e.event.endswith("progress")]
    assert progress["rows"] == 8
    assert progress["unchanged"] == 3  # A1 and A4 left out, A3's first row judged so
    assert progress["selected"] == 2


@pytest.mark.parametrize(
    "sql",
    [
        "select external_id, value::varchar as value from t",  # numbers as text
        "select external_id::bigint as external_id, value from t",  # ids as numbers
        "select external_id, value, '2024-03-02' as date from t",  # dates as text
        # integral: written by the builder with its 301 digits, by SQL as 1.5e+300
        "select external_id, value * 1e300 as value from t",
    ],
)
def test_rows_of_a_form_sql_does_not_write_are_all_judged_by_the_builder(sql: str) -> None:
    """Where a column's type is one the SQL does not write as the builder does, no row is left
    out: the builder still finds every item unchanged and sends nothing."""
    conn = duckdb.connect()
    conn.execute(
        "create table t as select * from (values ('1', 1.5), ('2', 2.0)) v(external_id, value)"
    )
    metric = MetricSettings(dimension_id="pipeline", sql=sql)
    _delivered(conn, [metric])
    [(_, answer)] = without_unchanged(conn, metric_answers(conn, [metric]), NOW)
    assert answer.unchanged == 0 and len(answer.rows) == 2
    payloads, _ = all_metric_payloads(
        [(metric, answer)],
        NOW,
        fingerprints=conn.execute(f"select * from {FINGERPRINTS}").fetchdf(),
    )
    assert payloads.empty


def test_nothing_is_left_out_before_a_first_delivery() -> None:
    conn = duckdb.connect()
    metric = MetricSettings(dimension_id="pipeline", sql="select 'A1' as external_id, 1 as value")
    answers = metric_answers(conn, [metric])
    assert without_unchanged(conn, answers, NOW) == answers


def test_rows_sql_cannot_read_are_all_judged_by_the_builder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Leaving rows out only saves time: where the SQL fails, every row goes to the builder,
    which sends nothing unchanged, and the metric is not lost."""
    conn = duckdb.connect()
    conn.execute("create table t as select 'A1' as external_id, 1.5 as value")
    metric = MetricSettings(dimension_id="pipeline", sql="select * from t")
    _delivered(conn, [metric])
    monkeypatch.setattr(
        planhat_queries, "sent_form_sql", lambda *_: ("error('unreadable')", "external_id")
    )
    answers = metric_answers(conn, [metric])
    [(_, answer)] = without_unchanged(conn, answers, NOW)
    assert answer.unchanged == 0 and answer.rows["external_id"].tolist() == ["A1"]
    stored = conn.execute(f"select * from {FINGERPRINTS}").fetchdf()
    assert _built([(metric, answer)], stored)[0] == []
