"""What the UI shows of every asset, applied once over all of them: a kind on each, and the
columns of what an asset holds (``dagster/column_schema``) for the assets that do not report
them from the warehouse layer.

The graph labels a node with the last part of its key, so those parts are unique across the
groups (``hull/users`` beside ``planhat/team_members``, ``copper/companies`` beside
``planhat/company_snapshots``); a test keeps them so."""

from collections.abc import Iterable, Sequence
from typing import Any

import dagster as dg
import duckdb
import pandas as pd

from hull_planhat_pipelines.warehouse.column_docs import column_description

DEFAULT_KINDS = frozenset({"duckdb"})
COLUMN_SCHEMA = "dagster/column_schema"


def readable_spec(spec: dg.AssetSpec) -> dg.AssetSpec:
    return spec.replace_attributes(kinds=set(spec.kinds) or set(DEFAULT_KINDS))


def readable(assets: Iterable[Any]) -> Sequence[Any]:
    """Every asset definition with ``readable_spec`` applied; anything else unchanged."""
    return [
        a.map_asset_specs(readable_spec) if isinstance(a, dg.AssetsDefinition) else a
        for a in assets
    ]


def frame_column_schema(frame: pd.DataFrame, table: str | None = None) -> dict[str, Any]:
    """A frame's columns as ``dagster/column_schema`` metadata, typed as DuckDB would store
    them (the same names the tables' schemas show: ``timestamp with time zone``, ...), and
    described as the columns of ``table`` (``schema.name``) are."""
    conn = duckdb.connect()
    try:
        conn.register("_frame", frame)
        described = [row[:2] for row in conn.execute("describe select * from _frame").fetchall()]
    finally:
        conn.close()
    columns = [
        dg.TableColumn(
            name=name,
            type=_type_name(dtype).lower(),
            description=column_description(table, name) if table else None,
        )
        for name, dtype in described
    ]
    return {COLUMN_SCHEMA: dg.TableSchema(columns=columns)}


def _type_name(dtype: str) -> str:
    """An all-null column is stored as VARCHAR (the warehouse layer does the same)."""
    return "VARCHAR" if dtype in ('"NULL"', "NULL") else dtype
