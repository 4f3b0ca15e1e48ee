"""A warehouse fed Planhat snapshots by hand, each followed by Hull's sync (the back-sync
tests)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import duckdb

from hull_planhat_pipelines.settings import load_settings
from hull_planhat_pipelines.sync.planhat.records import companies_frame, endusers_frame
from hull_planhat_pipelines.warehouse.hull_apply import apply_sync
from hull_planhat_pipelines.warehouse.planhat_snapshots import write_snapshot

T0 = dt.datetime(2026, 11, 20, 9, 0, tzinfo=dt.UTC)
OTHER = {"_id": "c2", "name": "Other", "externalId": "x2"}


class Warehouse:
    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.settings = load_settings()
        self.snapshots = 0

    def cycle(
        self, *companies: dict[str, Any], endusers: list[dict[str, Any]] | None = None
    ) -> Any:
        """A snapshot listing ``companies`` (and ``endusers``), then Hull's sync."""
        self.snapshots += 1
        at = T0 + dt.timedelta(minutes=5 * self.snapshots)
        write_snapshot(self.path, "companies", companies_frame(list(companies), fetched_at=at), at)
        if endusers is not None:
            write_snapshot(self.path, "endusers", endusers_frame(endusers, fetched_at=at), at)
        return apply_sync(
            self.path, self.settings, run_id=f"r{self.snapshots}", now=at, forwarding=False
        ).changes

    def attributes(self, planhat_id: str, table: str = "accounts") -> dict[str, Any]:
        with duckdb.connect(self.path, read_only=True) as conn:
            [(text,)] = conn.execute(
                f"select attributes from hull.{table} where list_contains(anonymous_ids, ?)",
                [f"planhat:{planhat_id}"],
            ).fetchall()
        return json.loads(text)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        with duckdb.connect(self.path, read_only=True) as conn:
            return conn.execute(sql).fetchall()

    def user(self, email: str) -> dict[str, Any]:
        """The attributes and anonymous ids of the user holding ``email``."""
        with duckdb.connect(self.path, read_only=True) as conn:
            [(text, ids)] = conn.execute(
                "select attributes, anonymous_ids from hull.users where email = ?", [email]
            ).fetchall()
        return {"attributes": json.loads(text), "anonymous_ids": sorted(ids)}

    def user_id(self, email: str) -> str:
        [(hull_id,)] = self.query(f"select hull_id from hull.users where email = '{email}'")
        return hull_id
