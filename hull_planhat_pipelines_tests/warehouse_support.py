"""Shared pieces of the tests that read a warehouse file directly."""

from __future__ import annotations

from pathlib import Path

import duckdb


def query(database: Path, sql: str) -> list[tuple]:
    """``sql``'s rows, read on a read-only connection closed at once (the file is free again)."""
    with duckdb.connect(str(database), read_only=True) as conn:
        return conn.execute(sql).fetchall()
