"""Incoming truth against the Copper sandbox: deletions detach, identity follows the source,
every record leaves its own log row, and an incremental history equals a sync from scratch.

Copper is edited in process (the sandbox's store), the pipeline reads it over real HTTP."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pytest
import yaml

from hull_planhat_pipelines.definitions import build_definitions
from hull_planhat_pipelines.orchestration import range_tags
from hull_planhat_pipelines.sandbox.copper import CopperSandbox
from hull_planhat_pipelines.settings import default_config_path, load_settings

TODAY = dt.datetime.now(dt.UTC).date()
START = TODAY - dt.timedelta(days=10)


class Pipeline:
    def __init__(self, copper: CopperSandbox, warehouse: Path) -> None:
        self.copper, self.warehouse = copper, warehouse
        self.instance = dg.DagsterInstance.ephemeral()

    def run(self, job: str, **kw: Any) -> dg.ExecuteInProcessResult:
        defs = build_definitions(load_settings())
        return defs.resolve_job_def(job).execute_in_process(
            instance=self.instance, raise_on_error=False, **kw
        )

    def full_refresh(self) -> dg.ExecuteInProcessResult:
        fetched = self.run("copper_sync", tags=range_tags(START.isoformat(), TODAY.isoformat()))
        assert fetched.success
        result = self.run("hull_sync")
        assert result.success
        return result

    def incremental(self) -> dg.ExecuteInProcessResult:
        assert self.run("copper_sync", partition_key=TODAY.isoformat()).success
        result = self.run("hull_sync")
        assert result.success
        return result

    def query(self, sql: str, params: list[Any] | None = None) -> list[tuple]:
        with duckdb.connect(str(self.warehouse), read_only=True) as conn:
            return conn.execute(sql, params or []).fetchall()

    def user(self, anonymous_id: str) -> dict[str, Any]:
        return self._profile("users", anonymous_id)

    def account(self, anonymous_id: str) -> dict[str, Any]:
        return self._profile("accounts", anonymous_id)

    def _profile(self, table: str, anonymous_id: str) -> dict[str, Any]:
        with duckdb.connect(str(self.warehouse), read_only=True) as conn:
            frame = conn.execute(
                f"select * from hull.{table} where list_contains(anonymous_ids, ?)",
                [anonymous_id],
            ).fetchdf()
        assert len(frame) == 1, f"{len(frame)} {table} hold {anonymous_id}"
        row = frame.iloc[0].to_dict()
        row["attributes"] = json.loads(row["attributes"])
        return row

    def log(self, event: str, object_id: Any = None) -> list[tuple]:
        where = "" if object_id is None else f" and object_id = '{object_id}'"
        return self.query(
            f"select object_type, object_id, reason, details from ops.sync_log"
            f" where event = '{event}'{where}"
        )


def _pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, copper: CopperSandbox, name: str):
    config = yaml.safe_load(default_config_path().read_text())
    config["copper"]["start_date"] = START.isoformat()
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(config))
    env = {
        "HULL_PLANHAT_CONFIG": str(tmp_path / f"{name}.yaml"),
        "HULL_PLANHAT_WAREHOUSE": str(tmp_path / f"{name}.duckdb"),
        "COPPER_API_URL": copper.base_url,
        "COPPER_API_KEY": copper.api_key,
        "COPPER_USER_EMAIL": copper.user_email,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Pipeline(copper, tmp_path / f"{name}.duckdb")


@pytest.fixture
def pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, copper_sandbox_factory) -> Pipeline:
    return _pipeline(tmp_path, monkeypatch, copper_sandbox_factory(seed=1, scale=0.05), "main")


def _groups(attributes: dict[str, Any], group: str) -> dict[str, Any]:
    return {k: v for k, v in attributes.items() if k.startswith(f"{group}/")}


def _user_activity(copper: CopperSandbox, parent_type: str) -> dict[str, Any]:
    user_types = {t["id"] for t in copper.metadata.activity_types["user"]}
    names = {t["id"]: t["name"] for t in copper.metadata.activity_types["user"]}
    return next(
        a
        for a in copper.records("activities")
        if a["type"]["id"] in user_types
        and a["type"]["category"] == "user"
        and names[a["type"]["id"]] in ("Note", "Phone Call", "Meeting")
        and a["parent"]["type"] == parent_type
    )


# -- case 2: deletions are detaches -------------------------------------------------------------
def test_deleted_records_detach_from_their_profiles_and_come_back(pipeline: Pipeline) -> None:
    copper = pipeline.copper
    pipeline.full_refresh()
    lead = next(r for r in copper.records("leads") if r.get("email"))
    person = next(
        r
        for r in copper.records("people")
        if r.get("emails") and r.get("title") and r["company_id"] is not None
    )
    company_id = next(
        c["id"]
        for c in copper.records("companies")
        if any(p["company_id"] == c["id"] for p in copper.records("people"))
    )
    activity = _user_activity(copper, "person")
    event_id = f"copper-activity:{activity['id']}"
    assert pipeline.query("select count(*) from hull.events where event_id = ?", [event_id]) == [
        (1,)
    ]
    before = pipeline.user(f"copper-person:{person['id']}")
    assert _groups(before["attributes"], "copper_person")
    account = pipeline.account(f"copper:{company_id}")
    members = {
        r[0]
        for r in pipeline.query(
            "select hull_id from hull.users where account_hull_id = ?", [account["hull_id"]]
        )
    }
    assert members

    copper.delete_records("leads", [lead["id"]])
    copper.delete_records("people", [person["id"]])
    copper.delete_records("companies", [company_id])
    copper.delete_records("activities", [activity["id"]])
    pipeline.full_refresh()

    detached = pipeline.user(f"copper-person:{person['id']}")
    assert detached["hull_id"] == before["hull_id"]  # the profile and its anonymous id stay
    assert set(_groups(detached["attributes"], "copper_person")) == {"copper_person/deleted_at"}
    lead_profile = pipeline.user(f"copper-lead:{lead['id']}")
    assert "copper_lead/deleted_at" in lead_profile["attributes"]
    assert set(_groups(lead_profile["attributes"], "copper_lead")) == {"copper_lead/deleted_at"}
    gone = pipeline.account(f"copper:{company_id}")
    assert set(_groups(gone["attributes"], "copper")) == {"copper/deleted_at"}
    assert pipeline.query(
        "select count(*) from hull.users where account_hull_id = ?", [gone["hull_id"]]
    ) == [(0,)]
    assert pipeline.query("select count(*) from hull.events where event_id = ?", [event_id]) == [
        (0,)
    ]
    assert ("person", str(person["id"])) in {r[:2] for r in pipeline.log("incoming.user.deleted")}
    assert ("lead", str(lead["id"])) in {r[:2] for r in pipeline.log("incoming.user.deleted")}
    assert [r[:2] for r in pipeline.log("incoming.account.deleted")] == [
        ("company", str(company_id))
    ]
    assert [r[:2] for r in pipeline.log("incoming.event.deleted")] == [
        ("activity", str(activity["id"]))
    ]

    # nothing more to detach: a second refresh changes nothing
    pipeline.full_refresh()
    assert len(pipeline.log("incoming.user.deleted")) == 2

    # the person comes back (restored in Copper): same profile, deleted_at cleared
    copper.upsert_records("people", [{**person, "date_modified": copper.clock()}])
    pipeline.incremental()
    back = pipeline.user(f"copper-person:{person['id']}")
    assert back["hull_id"] == before["hull_id"]
    assert "copper_person/deleted_at" not in back["attributes"]
    assert back["attributes"]["copper_person/title"] == before["attributes"]["copper_person/title"]


# -- case 9: Planhat rows without _id (pure: the frame the Planhat asset writes) ------------------
def test_planhat_endusers_without_id_are_skipped_one_by_one_never_collapsed() -> None:
    from hull_planhat_pipelines.sync.hull_sync import ProfileStore, compute_changes
    from hull_planhat_pipelines.sync.planhat_mapping import PlanhatRows
    from hull_planhat_pipelines.sync.planhat_records import endusers_frame
    from hull_planhat_pipelines_tests.hull_support import NOW, example_settings

    records = [
        {"email": "no-id-1@x.io", "firstName": "A"},
        {"_id": "", "email": "no-id-2@x.io", "firstName": "B"},
        {"_id": "e1", "email": " Ann@X.io ", "firstName": "Ann"},
        {"_id": "e2", "email": "not-an-email", "firstName": "C"},
        {"_id": "e3", "email": "nul\x00@x.io", "firstName": "D"},
    ]
    frame = endusers_frame(records, fetched_at=NOW, partition_date=NOW.date())
    assert len(frame) == 5  # both rows without _id kept, not collapsed into one
    changes = compute_changes(
        example_settings(), ProfileStore(), None, PlanhatRows(endusers=frame), now=NOW
    )
    skips = [(e.object_id, e.reason) for e in changes.log if e.event == "incoming.user.skip"]
    assert sorted(skips, key=str) == sorted(
        [(None, "No _id"), (None, "No _id"), ("e2", "Invalid email"), ("e3", "Invalid email")],
        key=str,
    )
    assert changes.user_claims.query("claim == 'email'")["value"].tolist() == ["ann@x.io"]
    assert set(changes.user_claims["hull_id"]) == set(changes.user_upserts["hull_id"])
    assert changes.user_claims["hull_id"].nunique() == 1
