"""Shared pieces of the tests that read a warehouse file directly."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb

from hull_planhat_pipelines.warehouse import attachments


def query(database: Path, sql: str) -> list[tuple]:
    """``sql``'s rows, read on a read-only connection closed at once (the file is free again)."""
    with duckdb.connect(str(database), read_only=True) as conn:
        return conn.execute(sql).fetchall()


def cached_bytes(path: str, tag: str = "BASE_TABLE") -> int:
    """Bytes the kept instance attaching ``path`` holds under ``tag`` (``BASE_TABLE``: the
    file's cached blocks), asked on the instance itself: a connection's pending result stays
    as it is."""
    host = attachments._attached[os.path.abspath(path)].host
    row = host.execute(
        "select coalesce(sum(memory_usage_bytes), 0) from duckdb_memory() where tag = ?", [tag]
    ).fetchone()
    return int(row[0])  # type: ignore[index]


def text_table(path: str, rows: int = 400_000, more: str = "") -> None:
    """Table ``t`` of ``path``: ``id`` and a 232-character text ``s`` per row (four row groups
    at the default 400,000 rows), plus the select items ``more`` (over ``range``)."""
    with duckdb.connect(path) as setup:
        setup.execute(
            "create table t as select range as id, md5(range::varchar) || repeat('x', 200) as s"
            f"{more} from range({rows})"
        )
