"""A Planhat target is one declaration: an extra one is delivered by the same asset and engine."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest

from hull_planhat_pipelines.assets.outgoing import build_delivery_asset, build_payload_assets
from hull_planhat_pipelines.clients.planhat_targets import (
    PLANHAT_TARGETS,
    DeliveryTarget,
    bulk_upsert,
)
from hull_planhat_pipelines.resources import PlanhatResource, WarehouseResource
from hull_planhat_pipelines.sandbox.planhat import PlanhatSandbox
from hull_planhat_pipelines.settings import parse_settings
from hull_planhat_pipelines.sync.planhat.fingerprints import (
    fields_text,
    fingerprint,
    select_changed,
)
from hull_planhat_pipelines.sync.planhat.shared import payloads_as_json
from hull_planhat_pipelines_tests.planhat_support import API_TOKEN, TENANT_TOKEN
from hull_planhat_pipelines_tests.warehouse_support import query as _query

ASSETS = DeliveryTarget("assets", "/assets", bulk_upsert, payloads="asset_payloads")
"""Planhat's ``/assets`` bulk upsert: everything else comes from the declaration's defaults."""


def asset_payloads(rows: list[dict[str, str]], fingerprints: pd.DataFrame | None) -> pd.DataFrame:
    """The extra target's payload builder: one payload per row, only those that changed."""
    candidates = pd.DataFrame(
        [
            {
                "target": ASSETS.name,
                "key": row["externalId"],
                "hull_id": None,
                "payload": row,
                "fingerprint": fingerprint(row),
                "fields": fields_text(sorted(row)),
            }
            for row in rows
        ]
    )
    return payloads_as_json(select_changed(candidates, fingerprints, ASSETS.name, force=False))


def _store(database: Path, payloads: pd.DataFrame) -> None:
    conn = duckdb.connect(str(database))
    try:
        conn.execute("create schema if not exists planhat")
        conn.register("_payloads", payloads)
        conn.execute("create or replace table planhat.asset_payloads as select * from _payloads")
    finally:
        conn.close()


@pytest.fixture
def sandbox(planhat_sandbox_factory: object) -> PlanhatSandbox:
    return planhat_sandbox_factory(  # type: ignore[operator]
        seed=7, scale=0, api_token=API_TOKEN, tenant_token=TENANT_TOKEN
    )


def test_an_extra_target_is_delivered_by_the_delivery_asset(
    sandbox: PlanhatSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = parse_settings(
        {"copper": {"start_date": "2024-01-01"}, "planhat": {"batch_size": 2}}
    )
    database = tmp_path / "warehouse.duckdb"
    rows = [{"externalId": f"AS-{i}", "name": f"Asset {i}"} for i in range(3)]
    _store(database, asset_payloads(rows, None))
    deliveries = build_delivery_asset(settings, targets=(*PLANHAT_TARGETS, ASSETS))
    assert dg.AssetKey(["planhat", "asset_payloads"]) in deliveries.dependency_keys
    planhat_resources = {
        "planhat": PlanhatResource(
            api_url=sandbox.rest_url,
            analytics_url=sandbox.analytics_url,
            api_token=API_TOKEN,
            tenant_token=TENANT_TOKEN,
        ),
        "warehouse": WarehouseResource(database=str(database)),
    }

    elsewhere = tmp_path / "default.duckdb"  # the environment's warehouse, not the resource's
    monkeypatch.setenv("HULL_PLANHAT_WAREHOUSE", str(elsewhere))
    result = dg.materialize([deliveries], resources=planhat_resources)

    assert result.success
    # the sync log lives beside the deliveries it speaks of: in the resource's warehouse
    logged = _query(
        database, "select count(*) from ops.sync_log where asset = 'planhat/deliveries'"
    )
    assert logged[0][0] > 0 and not elsewhere.exists()
    stored = {r["externalId"]: r for r in sandbox.records("assets")}
    assert {k: r["name"] for k, r in stored.items()} == {f"AS-{i}": f"Asset {i}" for i in range(3)}
    puts = sandbox.rest.recorded(method="PUT")
    assert [(r.path, len(r.body)) for r in puts] == [("/assets", 2), ("/assets", 1)]
    rows_sent = _query(
        database,
        "select key, status, batch from planhat.deliveries where target = 'assets' order by key",
    )
    assert rows_sent == [("AS-0", "created", 1), ("AS-1", "created", 1), ("AS-2", "created", 2)]
    remembered = _query(
        database, "select key from planhat.delivery_fingerprints where target = 'assets'"
    )
    assert sorted(k for (k,) in remembered) == sorted(stored)
    (materialization,) = result.get_asset_materialization_events()
    metadata = materialization.materialization.metadata
    assert metadata["by_target"].value == {"assets": {"created": 3}}

    # Delivered content is not sent again; a changed record alone is.
    columns = ["target", "key", "fingerprint", "fields", "delivered_at", "planhat_id"]
    fingerprints = pd.DataFrame(
        _query(database, f"select {', '.join(columns)} from planhat.delivery_fingerprints"),
        columns=columns,
    )
    rows[1] = {**rows[1], "name": "Asset one"}
    changed = asset_payloads(rows, fingerprints)
    assert changed["key"].tolist() == ["AS-1"]
    _store(database, changed)
    again = dg.materialize([deliveries], resources=planhat_resources)
    assert again.success
    assert [len(r.body) for r in sandbox.rest.recorded(method="PUT")] == [2, 1, 1]
    assert next(r for r in sandbox.records("assets") if r["externalId"] == "AS-1")["name"] == (
        "Asset one"
    )
    assert len(sandbox.records("assets")) == 3


def test_every_declared_target_is_fed_by_a_payload_asset() -> None:
    settings = parse_settings({"copper": {"start_date": "2024-01-01"}})
    built = {key for asset in build_payload_assets(settings) for key in asset.keys}
    assert {dg.AssetKey(["planhat", t.payloads]) for t in PLANHAT_TARGETS} == built
    deliveries = build_delivery_asset(settings)
    assert deliveries.dependency_keys == built
    assert [t.name for t in PLANHAT_TARGETS] == ["companies", "endusers", "activities", "metrics"]
