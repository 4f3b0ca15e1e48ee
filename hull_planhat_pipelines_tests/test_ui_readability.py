"""What the UI shows of the assets, and the developer commands around it (no browser here)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest

from hull_planhat_pipelines.cli import (
    StepSummary,
    SyncSummary,
    merge_steps,
    quiet_library_warnings,
)
from hull_planhat_pipelines.definitions import build_definitions
from hull_planhat_pipelines.dev import (
    LOCAL_INSTANCE_CONFIG,
    dev_session,
    start_process_group,
    stop_process_group,
)
from hull_planhat_pipelines.readability import frame_column_schema
from hull_planhat_pipelines.settings import load_settings
from hull_planhat_pipelines.warehouse import column_schema
from hull_planhat_pipelines.warehouse.column_docs import column_description

PLUMBING = {"partition_expr", "current_view"}


def _specs() -> dict[str, dg.AssetSpec]:
    defs = build_definitions(load_settings())
    return {s.key.to_user_string(): s for s in defs.resolve_all_asset_specs()}


def test_every_asset_has_a_kind_a_description_and_no_plumbing_metadata() -> None:
    specs = _specs()
    assert specs
    for key, spec in specs.items():
        assert spec.kinds, key
        assert spec.description, key
        assert not PLUMBING & set(spec.metadata), (key, set(spec.metadata))


def test_the_users_and_companies_nodes_say_which_they_are() -> None:
    """Formerly two nodes labelled "users" and two "companies": each label now names its thing."""
    specs = _specs()
    assert {"hull/users", "planhat/team_members"} <= set(specs)
    assert {"copper/companies", "planhat/company_snapshots"} <= set(specs)
    labels = [key.rsplit("/", 1)[1] for key in specs]
    assert len(labels) == len(set(labels))
    assert specs["planhat/team_members"].description.startswith("Planhat team members")
    assert specs["planhat/company_snapshots"].description.startswith("Planhat company snapshots")


def test_the_column_schema_is_the_written_table(tmp_path: Path) -> None:
    conn = duckdb.connect(str(tmp_path / "w.duckdb"))
    conn.execute("create schema copper")
    conn.execute(
        "create table copper.leads (id bigint, primary_email varchar, date_modified timestamptz)"
    )
    schema = column_schema(conn, "copper", "leads")["dagster/column_schema"]
    assert [(c.name, c.type) for c in schema.columns] == [
        ("id", "bigint"),
        ("primary_email", "varchar"),
        ("date_modified", "timestamp with time zone"),
    ]
    assert column_schema(conn, "copper", "missing") == {}
    descriptions = {c.name: c.description for c in schema.columns}
    assert descriptions["id"] == column_description("copper.leads", "id")
    assert descriptions["date_modified"].startswith("When the record last changed")
    # an object declared beyond the packaged ones: the shared columns, and its own as declared
    conn.execute("create table copper.tasks (id bigint, due_date timestamptz, notes varchar)")
    tasks = column_schema(conn, "copper", "tasks", {"due_date": "When the task is due."})
    assert [c.description for c in tasks["dagster/column_schema"].columns] == [
        column_description("copper.leads", "id"),
        "When the task is due.",
        None,
    ]
    # a column no table declares is shown without one, not with another table's
    conn.execute("create schema other")
    conn.execute("create table other.leads (id bigint)")
    other = column_schema(conn, "other", "leads")["dagster/column_schema"]
    assert [c.description for c in other.columns] == [None]


def test_a_dry_run_frame_is_described_as_its_table() -> None:
    frame = pd.DataFrame({"target": ["endusers"], "status": ["dry_run"], "extra": [1]})
    described = frame_column_schema(frame, "planhat.deliveries")["dagster/column_schema"]
    assert {c.name: c.description for c in described.columns} == {
        "target": column_description("planhat.deliveries", "target"),
        "status": column_description("planhat.deliveries", "status"),
        "extra": None,
    }
    plain = frame_column_schema(frame)["dagster/column_schema"]
    assert [c.description for c in plain.columns] == [None, None, None]


def test_the_compact_summary_has_one_line_per_asset() -> None:
    steps = [
        StepSummary("planhat/company_snapshots", True, rows=10, requests=1, detail="snapshot"),
        StepSummary("hull/users", True, rows=5, detail="first"),
        StepSummary(
            "planhat/company_snapshots", True, rows=12, requests=1, detail="after delivery"
        ),
        StepSummary("hull/users", False, rows=None, detail="boom"),
    ]
    merged = merge_steps(steps)
    assert [s.step for s in merged] == ["planhat/company_snapshots", "hull/users"]
    assert (merged[0].rows, merged[0].requests, merged[0].detail) == (12, 2, "after delivery")
    assert (merged[1].ok, merged[1].rows, merged[1].detail) == (False, 5, "boom")
    table = SyncSummary(steps).table()
    assert len(table.splitlines()) == 3 and "FAILED" in table
    assert len(SyncSummary(steps).table(compact=False).splitlines()) == 5
    assert steps[0].rows == 10  # the summary's own steps are left as they were


def test_a_dev_session_gets_a_local_instance_and_a_throw_away_warehouse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with dev_session({"PATH": "x"}, {"COPPER_API_URL": "http://127.0.0.1:1"}) as dev:
        assert dev.env["COPPER_API_URL"] == "http://127.0.0.1:1"
        assert (dev.dagster_home / "dagster.yaml").read_text() == LOCAL_INSTANCE_CONFIG.read_text()
        assert dev.env["HULL_PLANHAT_WAREHOUSE"] == str(dev.warehouse) and dev.temporary
        assert "location_name: hull_planhat_pipelines" in dev.workspace.read_text()
        folder = dev.workspace.parent
    assert not folder.exists()
    kept = tmp_path / "kept.duckdb"
    with dev_session({"HULL_PLANHAT_WAREHOUSE": str(kept)}, {}) as dev:
        assert dev.warehouse == kept and not dev.temporary


def test_stopping_a_process_group_leaves_no_child_behind(tmp_path: Path) -> None:
    """A leader that ignores the interrupt and a child it started are both gone after the stop."""
    script = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', "
        "'import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(600)'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    process = start_process_group(
        [sys.executable, "-c", script], os.environ, tmp_path, log=tmp_path / "log"
    )
    deadline = time.monotonic() + 30
    while not (tmp_path / "log").read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.1)
    child = int((tmp_path / "log").read_text().split()[0])
    stop_process_group(process, grace=0.5)
    assert process.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        if "Z" in Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]:
            break  # a zombie waiting for init: dead
        time.sleep(0.1)
    state = Path(f"/proc/{child}/stat")
    assert not state.exists() or state.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def test_the_cli_silences_library_notices_only() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_library_warnings()
        warnings.warn(
            "Parameter `backfill_policy` of function `asset` is currently in beta",
            dg.BetaWarning,
            stacklevel=1,
        )
        warnings.warn("the warehouse is 90% full", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["the warehouse is 90% full"]


def test_definitions_load_without_beta_warnings() -> None:
    code = "import hull_planhat_pipelines.definitions"
    result = subprocess.run(
        [sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "BetaWarning" not in result.stderr and "PreviewWarning" not in result.stderr
