"""The warehouse layer: every read and write of the DuckDB file goes through these modules.

- ``connection``: the file, short-lived connections, small helpers, the sync log;
- ``locks``: one deliverer at a time per warehouse;
- ``views``: the current views (``copper_current``, ``planhat_current``), declared in one place;
- ``copper_tables``: Copper's partitioned tables, one transactional write per run;
- ``tables``: tables replaced whole (Planhat team members, payloads);
- ``planhat_snapshots``: Planhat snapshots with their history, and their diff for Hull;
- ``deliveries``, ``outbox``: the delivery journal and Hull's outbox.

Assets call these functions; none holds a connection across an HTTP call.
"""

from hull_planhat_pipelines.warehouse.connection import (
    DEFAULT_WAREHOUSE,
    LOCK_WAIT_SECONDS,
    PARTITION_COLUMN,
    SYNC_LOG_DDL,
    WAREHOUSE_ENV_VAR,
    append_sync_log,
    append_table,
    column_schema,
    connect,
    quote,
    read_only,
    run,
    table_exists,
    warehouse_path,
)
from hull_planhat_pipelines.warehouse.copper_tables import CopperSlice, write_copper_table
from hull_planhat_pipelines.warehouse.locks import (
    DEFAULT_DELIVERY_LOCK_WAIT,
    LOCK_WAIT_ENV_VAR,
    WarehouseBusy,
    delivery_lock,
    lock_path,
    lock_wait_seconds,
    read_holder,
)
from hull_planhat_pipelines.warehouse.planhat_snapshots import (
    FULL_HISTORY,
    SnapshotDiff,
    applied_table,
    diff_snapshot,
    remember_snapshot,
    snapshot_age,
    store_snapshot,
    write_snapshot,
)
from hull_planhat_pipelines.warehouse.tables import ensure_columns, replace_table
from hull_planhat_pipelines.warehouse.views import (
    COPPER_CURRENT,
    PLANHAT_SNAPSHOT_TABLES,
    CurrentView,
    create_current_view,
    current_view_sql,
    latest_view,
    point_latest_view,
    snapshot_table,
)

__all__ = [
    "COPPER_CURRENT",
    "DEFAULT_DELIVERY_LOCK_WAIT",
    "DEFAULT_WAREHOUSE",
    "FULL_HISTORY",
    "LOCK_WAIT_ENV_VAR",
    "LOCK_WAIT_SECONDS",
    "PARTITION_COLUMN",
    "PLANHAT_SNAPSHOT_TABLES",
    "SYNC_LOG_DDL",
    "WAREHOUSE_ENV_VAR",
    "CopperSlice",
    "CurrentView",
    "SnapshotDiff",
    "WarehouseBusy",
    "append_sync_log",
    "append_table",
    "applied_table",
    "column_schema",
    "connect",
    "create_current_view",
    "current_view_sql",
    "delivery_lock",
    "diff_snapshot",
    "ensure_columns",
    "latest_view",
    "lock_path",
    "lock_wait_seconds",
    "point_latest_view",
    "quote",
    "read_holder",
    "read_only",
    "remember_snapshot",
    "replace_table",
    "run",
    "snapshot_age",
    "snapshot_table",
    "store_snapshot",
    "table_exists",
    "warehouse_path",
    "write_copper_table",
    "write_snapshot",
]
