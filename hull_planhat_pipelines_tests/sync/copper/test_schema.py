"""A Copper object is one declaration plus its sandbox seed entry: tasks, declared here only.

Nothing in the package knows Copper tasks. This file declares them for the pipeline
(``CopperObject``: search path, date and sort fields, columns, id lookups) and for the sandbox
(``SeedObject``: how rows are generated and searched), then materializes ``copper/tasks``
against the sandbox into a temporary warehouse and checks every row.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pytest
import requests

from hull_planhat_pipelines.clients.copper import CopperClient
from hull_planhat_pipelines.definitions import build_definitions
from hull_planhat_pipelines.orchestration import copper_range_tags
from hull_planhat_pipelines.sandbox.copper import CopperSandbox
from hull_planhat_pipelines.sandbox.copper_seed import (
    COMMON_SEARCH_KEYS,
    DAY,
    PAGING_KEYS,
    SORT_KEYS,
    CopperSeed,
    SeedObject,
    field_of,
    seed_objects,
)
from hull_planhat_pipelines.sync.copper.records import (
    Problem,
    duckdb_types,
    frame_columns,
    normalize,
)
from hull_planhat_pipelines.sync.copper.schema import (
    COPPER_OBJECTS,
    Column,
    CopperMetadata,
    Lookup,
    copper_objects,
    modified_object,
)
from hull_planhat_pipelines.warehouse.copper_tables import ROW_HASH
from hull_planhat_pipelines_tests.hull_support import settings_with
from hull_planhat_pipelines_tests.materialize import asset_metadata, failures, materialize

# -- the declarations: all it takes -------------------------------------------------------------
TASKS = modified_object(
    "tasks",
    "task",
    columns=(
        Column("status", "text"),
        Column("priority", "text"),
        Column("assignee_email", "text"),
        Column("due_date", "timestamp"),
        Column("completed_date", "timestamp"),
    ),
    lookups=(Lookup("assignee_email", "assignee_id", "user_emails"),),
    hull_source=False,
)
"""Copper's ``POST /tasks/search``, windowed and sorted by ``date_modified``."""


def _task(seed: CopperSeed, row: int) -> dict[str, Any]:
    """A task as Copper answers it: related to a lead, due three days after its creation, every
    third one completed; row 1 has no assignee."""
    dice = seed.dice("task", row)
    created, modified = seed.dates("tasks", row)
    done = row % 3 == 0
    lead = int(seed.ids["leads"][row % seed.counts["leads"]])
    return {
        "id": int(seed.ids["tasks"][row]),
        "name": f"Follow up #{row}",
        "related_resource": {"id": lead, "type": "lead"},
        "assignee_id": None if row == 1 else dice.choice(seed.user_ids),
        "due_date": created + 3 * DAY,
        "reminder_date": None,
        "completed_date": modified if done else None,
        "priority": dice.choice(("None", "High")),
        "status": "Completed" if done else "Open",
        "details": None,
        "tags": [],
        "custom_fields": [],
        "date_created": created,
        "date_modified": modified,
        "custom_activity_type_id": None,
    }


TASK_FILTERS = frozenset({
    "assignee_ids", "opportunity_ids", "project_ids", "contact_type_ids", "custom_fields",
    "followed", "tags", "statuses", "ids", "minimum_due_date", "maximum_due_date",
    "minimum_created_date", "maximum_created_date",
    "minimum_modified_date", "maximum_modified_date",
})  # fmt: skip
"""The documented filters of Copper's task search."""

TASKS_SEED = SeedObject(
    "tasks",
    "task",
    base_count=400,
    min_count=5,
    id_base=90_500_000,
    record=_task,
    search_keys=PAGING_KEYS | SORT_KEYS | TASK_FILTERS,
    sorts={k: field_of(k) for k in ("name", "status", "priority", "due_date")},
)


# -- the tests -------------------------------------------------------------------------------------
@pytest.fixture
def sandbox(copper_sandbox_factory: Callable[..., CopperSandbox]) -> CopperSandbox:
    return copper_sandbox_factory(objects=seed_objects([TASKS_SEED]))


def _utc(seconds: int | None) -> dt.datetime | None:
    return None if seconds is None else dt.datetime.fromtimestamp(seconds, dt.UTC)


def test_materializing_a_declared_object_lands_every_record(
    sandbox: CopperSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The project's definitions, given the packaged declarations plus tasks, materialize
    ``copper/tasks`` (and its checks) against the sandbox into a temporary warehouse."""
    today = dt.datetime.now(dt.UTC).date()
    start = today - dt.timedelta(days=20)
    database = tmp_path / "warehouse.duckdb"
    for name, value in {
        "HULL_PLANHAT_WAREHOUSE": str(database),
        "COPPER_API_URL": sandbox.base_url,
        "COPPER_API_KEY": sandbox.api_key,
        "COPPER_USER_EMAIL": sandbox.user_email,
    }.items():
        monkeypatch.setenv(name, value)
    settings = settings_with(start_date=start.isoformat(), requests_per_minute=100_000)
    objects = [*COPPER_OBJECTS.values(), TASKS]
    defs = build_definitions(settings, copper_objects=objects)
    assert defs.resolve_assets_def(["copper", "tasks"]).key == dg.AssetKey(["copper", "tasks"])
    copper_sync = defs.resolve_job_def("copper_sync").asset_layer.selected_asset_keys
    assert dg.AssetKey(["copper", "tasks"]) in copper_sync

    result = materialize(
        [dg.AssetKey(["copper", "tasks"])],
        instance=dg.DagsterInstance.ephemeral(),
        tags=copper_range_tags(start, today),
        settings=settings,
        copper_objects=objects,
    )
    assert result.success, failures(result)
    assert asset_metadata(result, "copper/tasks")
    checks = result.get_asset_check_evaluations()
    assert {c.asset_key for c in checks} == {dg.AssetKey(["copper", "tasks"])}
    assert checks and all(c.passed for c in checks)

    expected = sandbox.records("tasks")
    assert len(expected) == 20  # 400 at scale 1, the tests' 0.05
    emails = {user["id"]: user["email"] for user in sandbox.metadata.users}
    names = [c.name for c in frame_columns(TASKS)]
    with duckdb.connect(str(database), read_only=True) as conn:
        rows = [
            dict(zip(names, row, strict=True))
            for row in conn.execute(
                f"select {', '.join(names)} from copper.tasks order by id"
            ).fetchall()
        ]
        described = conn.execute("select column_name, column_type from (describe copper.tasks)")
        types = dict(described.fetchall())
        current = conn.execute("select count(*) from copper_current.tasks").fetchone()

    assert [row["id"] for row in rows] == [task["id"] for task in expected]
    assert current == (len(expected),)
    for row, task in zip(rows, expected, strict=True):
        assert json.loads(row["record"]) == task
        assert row["name"] == task["name"]
        assert row["status"] == task["status"]
        assert row["priority"] == task["priority"]
        assert row["assignee_email"] == emails.get(task["assignee_id"])
        assert row["due_date"] == _utc(task["due_date"])
        assert row["completed_date"] == _utc(task["completed_date"])
        assert row["date_modified"] == _utc(task["date_modified"])
        modified_day = dt.datetime.fromtimestamp(task["date_modified"], dt.UTC).date()
        assert row["partition_date"] == max(start, modified_day)
        assert row["problems"] is None
    assert rows[1]["assignee_email"] is None  # row 1: no assignee, not an unknown one
    assert any(row["assignee_email"] for row in rows)
    assert {row["status"] for row in rows} == {"Open", "Completed"}
    assert types["due_date"] == "TIMESTAMP WITH TIME ZONE"
    assert types == {  # the declared columns, and the content hash a re-fetch is judged by
        **{
            name: kind.replace("TIMESTAMPTZ", "TIMESTAMP WITH TIME ZONE")
            for name, kind in duckdb_types(TASKS).items()
        },
        ROW_HASH: "UHUGEINT",
    }


def test_a_declared_object_is_walked_by_the_value_cursor(sandbox: CopperSandbox) -> None:
    """Tasks share the walk of every sorted object: edits during the walk lose nothing."""
    sandbox.churn("tasks", 2)
    with CopperClient(
        sandbox.base_url, sandbox.api_key, sandbox.user_email, requests_per_minute=None, page_size=3
    ) as client:
        seen = {
            r["id"] for page in client.search(TASKS, start=None, end=None) for r in page.records
        }
        newest = client.newest_modified(TASKS)
    sandbox.churn("tasks", 0)
    records = sandbox.records("tasks")
    assert seen == {task["id"] for task in records}
    assert newest == max(task["date_modified"] for task in records)


def test_the_sandbox_keeps_its_rules_for_a_declared_object(sandbox: CopperSandbox) -> None:
    headers = {
        "X-PW-AccessToken": sandbox.api_key,
        "X-PW-Application": "developer_api",
        "X-PW-UserEmail": sandbox.user_email,
        "Content-Type": "application/json",
    }
    url = f"{sandbox.base_url}/tasks/search"
    refused = requests.post(url, json={"include_converted_leads": True}, headers=headers)
    assert refused.status_code == 422
    assert (
        requests.post(url, json={}, headers={**headers, "X-PW-AccessToken": "x"}).status_code == 401
    )
    by_name = requests.post(url, json={"sort_by": "name", "page_size": 200}, headers=headers)
    assert by_name.status_code == 200
    got = [task["name"] for task in by_name.json()]
    assert got == sorted(got, key=str.casefold)
    assert len(got) == sandbox.count("tasks")


def test_the_default_registries_are_unchanged_and_names_are_declared_once() -> None:
    assert "tasks" not in COPPER_OBJECTS
    assert list(copper_objects([TASKS])) == [*COPPER_OBJECTS, "tasks"]
    assert list(seed_objects([TASKS_SEED])) == [*COPPER_OBJECTS, "tasks"]
    with pytest.raises(ValueError, match="declared twice"):
        copper_objects([modified_object("leads", "lead")])
    with pytest.raises(ValueError, match="declared twice"):
        seed_objects([SeedObject("people", "person", 1, 1, 1, _task, COMMON_SEARCH_KEYS)])
    assert [c.name for c in frame_columns(TASKS)][5:10] == [
        "status",
        "priority",
        "assignee_email",
        "due_date",
        "completed_date",
    ]


def test_lookups_come_from_the_declaration_alone() -> None:
    """An object without lookups normalizes (no table of lookups to forget: that was a KeyError
    on every record); a declared lookup resolves its id or reports it unknown."""
    metadata = CopperMetadata.model_validate({"users": [{"id": 7, "email": "ann@example.com"}]})
    record = {"id": 1, "name": "Call back", "assignee_id": 7, "status": "Open"}
    bare = modified_object("notes", "note")
    assert normalize(bare, record, metadata) == record
    problems: list[Problem] = []
    assert normalize(TASKS, record, metadata, problems=problems)["assignee_email"] == (
        "ann@example.com"
    )
    unknown = normalize(TASKS, {**record, "assignee_id": 8}, metadata, problems=problems)
    assert unknown["assignee_email"] is None
    assert [str(p) for p in problems] == ["assignee_email: unknown assignee_id 8"]
