"""Operator queries that feed Planhat payloads (metrics, SQL activities), run on the warehouse.

``sync.planhat`` stays pure: it builds payloads from each query's answer. Running the SQL is
warehouse work, so it happens here, on the caller's connection, locked down first
(``operator_sql``): a query reads the warehouse and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import pandas as pd

from hull_planhat_pipelines.settings import ActivityQuerySettings, MetricSettings
from hull_planhat_pipelines.sync.operator_sql import lock_down, run_select
from hull_planhat_pipelines.sync.planhat.metrics import metric_rows
from hull_planhat_pipelines.sync.planhat.shared import QueryAnswer


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
