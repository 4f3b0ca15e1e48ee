"""Operator queries that feed Planhat payloads (metrics, SQL activities), run on the warehouse.

``sync.planhat`` stays pure: it builds payloads from each query's answer. Running the SQL is
warehouse work, so it happens here, on the caller's connection, locked down first
(``operator_sql``): a query reads the warehouse and nothing else.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import replace

import duckdb
import numpy as np
import pandas as pd

from hull_planhat_pipelines.settings import ActivityQuerySettings, MetricSettings
from hull_planhat_pipelines.sync.canonical import content_json
from hull_planhat_pipelines.sync.hull.batch import quote as literal
from hull_planhat_pipelines.sync.operator_sql import lock_down, run_select
from hull_planhat_pipelines.sync.planhat.metrics import METRIC_COLUMNS, default_date, metric_rows
from hull_planhat_pipelines.sync.planhat.shared import METRICS, QueryAnswer
from hull_planhat_pipelines.warehouse.connection import run, table_exists
from hull_planhat_pipelines.warehouse.deliveries import FINGERPRINTS


def run_metric_sql(conn: duckdb.DuckDBPyConnection, sql: str) -> pd.DataFrame:
    """A metric query's rows over the caller's connection: ``external_id``, ``value`` and
    ``date`` when the query has one. A ValueError names missing columns or a refused query."""
    return metric_rows(run_select(lock_down(conn), sql, "metric query"))


def answer(conn: duckdb.DuckDBPyConnection, sql: str, what: str) -> QueryAnswer:
    """One operator query's rows, or its error's first line (300 characters at most): one
    failing query must not stop the others."""
    try:
        return QueryAnswer(rows=run_select(lock_down(conn), sql, what))
    except (duckdb.Error, ValueError) as exc:
        lines = str(exc).splitlines() or [type(exc).__name__]
        return QueryAnswer(error=lines[0][:300])


def metric_answers(
    conn: duckdb.DuckDBPyConnection, metrics: Sequence[MetricSettings]
) -> list[tuple[MetricSettings, QueryAnswer]]:
    """Each configured metric with its query's answer."""
    return [(metric, answer(conn, metric.sql, "metric query")) for metric in metrics]


def activity_answers(
    conn: duckdb.DuckDBPyConnection, queries: Sequence[ActivityQuerySettings]
) -> list[tuple[ActivityQuerySettings, QueryAnswer]]:
    """Each configured activity query with its answer."""
    return [(query, answer(conn, query.sql, f"activity query {query.name}")) for query in queries]


_NUMBER_TYPES = frozenset(
    {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER"}
    | {"UBIGINT", "FLOAT", "DOUBLE"}
)
_TIME_TYPES = frozenset(
    {"DATE", "TIMESTAMP", "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS", "TIMESTAMP WITH TIME ZONE"}
)


def sent_form_sql(
    metric: MetricSettings, types: Mapping[str, str], now: dt.datetime
) -> tuple[str, str] | None:
    """SQL for the key of a metric row's item and for the text its fingerprint hashes
    (``content_json`` of the item ``metric_payloads`` builds), over the columns
    ``external_id``, ``value`` and ``date`` of rows typed ``types`` (DuckDB's names, as the
    builder's frame is read); None when a column has a type this SQL does not write the way
    the builder does.

    For a cycle that leaves out, before the builder, the rows whose item was sent exactly so
    last time: a metric answers for every record each cycle, and mapping and fingerprinting
    each row in Python cost the whole answer, where SQL reads it in milliseconds. The SQL
    writes numbers, dates and text as the builder does, but it need not: the fingerprint
    stored under a key hashes the text the builder wrote when it sent that key's item, so a
    row SQL writes otherwise matches none and is handed to the builder, which compares it
    itself. Only an item equal to its last delivery, byte for byte, is left out. A null (no
    id, no finite number) leaves both null."""
    if types.get("external_id") != "VARCHAR" or types.get("value") not in _NUMBER_TYPES:
        return None
    default = literal(default_date(now))
    date_type = types.get("date")
    if date_type is None:
        date = default
    elif date_type in _TIME_TYPES:
        stamp = "timezone('UTC', date)" if "ZONE" in date_type else "date::timestamp"
        date = f"coalesce(strftime({stamp}, '%Y-%m-%dT%H:%M:%S.%g') || 'Z', {default})"
    else:
        return None
    number = "value::double"
    # an integral float is written as an integer (``canonical_content``), exactly
    value = (
        f"case when isfinite({number}) then case when {number} = trunc({number})"
        f" and abs({number}) < 1e38 then {number}::hugeint::varchar"
        f" else {number}::varchar end end"
    )
    key = f"{literal(f'{metric.dimension_id}:{metric.model}:')} || external_id || ':' || {date}"
    content = " || ".join(
        [
            literal('{"date":'),
            f"to_json({date})",
            literal(f',"dimensionId":{content_json(metric.dimension_id)},"externalId":'),
            "to_json(external_id)",
            literal(f',"model":{content_json(metric.model)},"value":'),
            value,
            literal("}"),
        ]
    )
    return key, content


def without_unchanged(
    conn: duckdb.DuckDBPyConnection,
    answers: Sequence[tuple[MetricSettings, QueryAnswer]],
    now: dt.datetime,
) -> list[tuple[MetricSettings, QueryAnswer]]:
    """The answers without the rows whose item was delivered last time exactly as it would be
    sent now (``sent_form_sql``), counted in their ``unchanged``. A row is left out only when
    no other row has its key (the builder reports duplicates) and the fingerprint stored under
    its key hashes its text."""
    if not table_exists(conn, *FINGERPRINTS.split(".")):
        return list(answers)
    return [(metric, _without_unchanged(conn, metric, answer, now)) for metric, answer in answers]


def _without_unchanged(
    conn: duckdb.DuckDBPyConnection,
    metric: MetricSettings,
    answer: QueryAnswer,
    now: dt.datetime,
) -> QueryAnswer:
    checked = answer.checked(METRIC_COLUMNS)
    if checked.rows is None or checked.rows.empty:
        return answer
    rows = metric_rows(checked.rows).assign(_position=np.arange(len(checked.rows)))
    conn.register("_metric_rows", rows)
    try:
        types = {name: kind for name, kind, *_ in run(conn, "describe _metric_rows")}
        sql = sent_form_sql(metric, types, now)
        if sql is None:
            return answer
        key, content = sql
        found = run(
            conn,
            "select r._position from (select _position, key, content, count(*) over"
            f" (partition by key) as n from (select _position, {key} as key, {content}"
            " as content from _metric_rows) where key is not null) r"
            f" join {FINGERPRINTS} f on f.target = ? and f.key = r.key"
            " where r.n = 1 and f.fingerprint = sha256(r.content)",
            [METRICS],
        )
    except duckdb.Error:  # a value SQL cannot read: the builder judges every row, as before
        return answer
    finally:
        conn.unregister("_metric_rows")
    if not found:
        return answer
    kept = np.ones(len(checked.rows), dtype=bool)
    kept[[position for (position,) in found]] = False
    return replace(
        answer,
        rows=checked.rows[kept].reset_index(drop=True),
        unchanged=answer.unchanged + len(found),
    )
