"""Benchmark: what the metric payloads cost as the days of metric history pile up.

    python benchmarks/metric_history.py [--accounts 7500] [--days 0 30 365] [--rounds 3]

A metric item's key carries its day, so ``planhat.delivery_fingerprints`` gains one row per
item every day a metric is sent. For each ``--days``, a fresh warehouse holds one metric query
over ``--accounts`` accounts (7,500: the example metric's rows at 100,000 people), today's
fingerprints (every item unchanged since it was sent) and those of the ``--days`` days before.
Three ways of building today's payloads are timed (median of ``--rounds``, untraced):
``whole_target`` reads every metric fingerprint (what the asset did first), ``todays_keys``
the fingerprints of the answer's keys only (``metric_keys``, what it did next), and
``left_out`` first leaves out, in SQL, the rows whose item was sent unchanged
(``planhat_queries.without_unchanged``), then builds the rest as ``todays_keys`` does (what it
does now; every row here is unchanged, so the builder gets none). Each reports
its seconds, the fingerprint rows it read and, from one more run, the peak of Python-traced
memory (pandas' arrays included, DuckDB's own buffers not). Both must find nothing to send;
the benchmark exits non-zero otherwise. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from hull_planhat_pipelines.settings import MetricSettings
from hull_planhat_pipelines.sync.planhat.metrics import all_metric_payloads, metric_keys
from hull_planhat_pipelines.sync.planhat.shared import METRICS
from hull_planhat_pipelines.warehouse import deliveries
from hull_planhat_pipelines.warehouse.planhat_queries import metric_answers, without_unchanged

from machine import MachineSpeed

NOW = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC)
METRIC = MetricSettings(
    dimension_id="open_pipeline_value",
    sql="select external_id, value from bench_values",
)
DAY = len("2026-06-01T00:00:00.000Z")


def build(path: str, accounts: int, days: int) -> int:
    """The warehouse: the metric's source, today's fingerprints and ``days`` days before them;
    returns how many metric fingerprints it holds."""
    conn = duckdb.connect(path)
    try:
        conn.execute(
            "create table bench_values as select 'ACC-' || lpad(i::varchar, 7, '0') as"
            " external_id, (i * 37 % 1000)::double as value from range(?) t(i)",
            [accounts],
        )
        payloads, _ = all_metric_payloads(metric_answers(conn, [METRIC]), NOW)
    finally:
        conn.close()
    today = pd.DataFrame(
        {
            "target": METRICS,
            "key": payloads["key"],
            "fingerprint": payloads["fingerprint"],
            "fields": payloads["fields"],
            "delivered_at": pd.Timestamp(NOW),
            "planhat_id": None,
        }
    )
    frames = [today]
    for back in range(1, days + 1):
        shift = dt.timedelta(days=back)
        day = (NOW - shift).strftime("%Y-%m-%dT00:00:00.000Z")
        frames.append(
            today.assign(
                key=today["key"].str.slice(0, -DAY) + day,
                delivered_at=today["delivered_at"] - shift,
            )
        )
    conn = duckdb.connect(path)
    try:
        conn.execute("create schema if not exists planhat")
        for statement in filter(str.strip, deliveries.FINGERPRINTS_DDL.split(";")):
            conn.execute(statement)
        conn.register("_fingerprints", pd.concat(frames, ignore_index=True))
        conn.execute(f"insert into {deliveries.FINGERPRINTS} by name select * from _fingerprints")
        conn.execute(  # the unique key deliveries keep
            f"create unique index {deliveries.FINGERPRINT_KEY}"
            f" on {deliveries.FINGERPRINTS} (target, key)"
        )
    finally:
        conn.close()
    return sum(len(f) for f in frames)


def whole_target(conn: duckdb.DuckDBPyConnection) -> tuple[pd.DataFrame, int]:
    answers = metric_answers(conn, [METRIC])
    fingerprints = deliveries.fingerprints_table(conn, [METRICS])
    payloads, _ = all_metric_payloads(answers, NOW, fingerprints=fingerprints)
    return payloads, len(fingerprints)


def todays_keys(conn: duckdb.DuckDBPyConnection) -> tuple[pd.DataFrame, int]:
    answers = metric_answers(conn, [METRIC])
    fingerprints = deliveries.fingerprints_of_keys(conn, METRICS, metric_keys(answers, NOW))
    payloads, _ = all_metric_payloads(answers, NOW, fingerprints=fingerprints)
    return payloads, len(fingerprints)


def left_out(conn: duckdb.DuckDBPyConnection) -> tuple[pd.DataFrame, int]:
    answers = without_unchanged(conn, metric_answers(conn, [METRIC]), NOW)
    fingerprints = deliveries.fingerprints_of_keys(conn, METRICS, metric_keys(answers, NOW))
    payloads, _ = all_metric_payloads(answers, NOW, fingerprints=fingerprints)
    return payloads, len(fingerprints)


WAYS: dict[str, Callable[[duckdb.DuckDBPyConnection], tuple[pd.DataFrame, int]]] = {
    "whole_target": whole_target,
    "todays_keys": todays_keys,
    "left_out": left_out,
}


def measure(path: str, rounds: int) -> dict[str, dict[str, Any]]:
    """Seconds from ``rounds`` untraced runs (tracing slows allocation-heavy code), the peak
    from one more, traced."""
    results: dict[str, dict[str, Any]] = {}
    for name, way in WAYS.items():
        seconds: list[float] = []
        for traced in [False] * rounds + [True]:
            conn = duckdb.connect(path, read_only=True)
            gc.collect()
            if traced:
                tracemalloc.start()
            started = time.perf_counter()
            payloads, read = way(conn)
            if traced:
                peak = tracemalloc.get_traced_memory()[1] / 2**20
                tracemalloc.stop()
            else:
                seconds.append(time.perf_counter() - started)
            conn.close()
        results[name] = {
            "seconds": round(statistics.median(seconds), 3),
            "fingerprints_read": read,
            "traced_peak_mb": round(peak, 1),
            "payloads": len(payloads),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=7_500)
    parser.add_argument("--days", type=int, nargs="+", default=[0, 30, 365])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    machine = MachineSpeed()
    runs: list[dict[str, Any]] = []
    ok = True
    for days in args.days:
        with tempfile.TemporaryDirectory(prefix="metric_history-") as tmp:
            path = str(Path(tmp) / "warehouse.duckdb")
            stored = build(path, args.accounts, days)
            results = measure(path, args.rounds)
        for name, result in results.items():
            print(
                f"{days:>4} days of history ({stored:>9,} fingerprints): {name:<12}"
                f" {result['seconds']:>6.3f} s, read {result['fingerprints_read']:>9,},"
                f" traced peak {result['traced_peak_mb']:>7.1f} MB,"
                f" {result['payloads']} to send"
            )
            ok = ok and result["payloads"] == 0
        runs.append({"days": days, "fingerprints": stored, **results})
    result = {
        "benchmark": "metric_history",
        "accounts": args.accounts,
        "runs": runs,
        "ok": ok,
        "machine": machine.report(),
    }
    print(json.dumps(result))
    if not ok:
        print("FAILED: an unchanged metric would be sent again", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
