"""``hull.user_upserts`` / ``hull.account_upserts`` keep every apply's changes, stamped with
the run: text columns stay text even when one apply's values are all missing (a first load has
no ``previous``), and the frame handed in is written as it is, not retyped."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pandas as pd

from hull_planhat_pipelines.warehouse.connection import append_table
from hull_planhat_pipelines.warehouse.hull_apply import _stamped_columns


def _append_upserts(
    conn: duckdb.DuckDBPyConnection, frame: pd.DataFrame, run_id: str, now: dt.datetime
) -> None:
    """As an apply appends its upserts."""
    append_table(
        conn, "hull.user_upserts", frame, columns=_stamped_columns(frame), params=[run_id, now]
    )


FIRST = dt.datetime(2024, 6, 1, 12, tzinfo=dt.UTC)
SECOND = FIRST + dt.timedelta(minutes=5)


def _upserts(values: list[str], previous: list[str | None]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "hull_id": pd.Series(["h1"] * len(values), dtype=object),
            "attribute": pd.Series(["copper_person/title"] * len(values), dtype=object),
            "value": pd.Series(values, dtype=object),
            "previous": pd.Series(previous, dtype=object),
            "is_new_profile": [not p for p in previous],
        }
    )


def test_each_apply_is_appended_with_its_run_and_text_stays_text(tmp_path: Path) -> None:
    conn = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    try:
        first = _upserts(['"Engineer"'], [None])  # nothing held before: no previous at all
        _append_upserts(conn, first, "run-1", FIRST)
        assert first["previous"].dtype == object and first["previous"].tolist() == [None]
        _append_upserts(conn, _upserts(['"Chief"'], ['"Engineer"']), "run-2", SECOND)
        _append_upserts(conn, _upserts([], []), "run-3", SECOND)

        types = dict(
            conn.execute(
                "select column_name, column_type from (describe hull.user_upserts)"
            ).fetchall()
        )
        rows = conn.execute(
            "select run_id, computed_at, value, previous, is_new_profile from hull.user_upserts"
            " order by computed_at"
        ).fetchall()
    finally:
        conn.close()
    assert types == {
        "hull_id": "VARCHAR",
        "attribute": "VARCHAR",
        "value": "VARCHAR",
        "previous": "VARCHAR",
        "is_new_profile": "BOOLEAN",
        "run_id": "VARCHAR",
        "computed_at": "TIMESTAMP WITH TIME ZONE",
    }
    assert rows == [
        ("run-1", FIRST, '"Engineer"', None, True),
        ("run-2", SECOND, '"Chief"', '"Engineer"', False),
    ]
