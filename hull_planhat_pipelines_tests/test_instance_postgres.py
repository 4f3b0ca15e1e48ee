"""The production instance: deploy/dagster.yaml on PostgreSQL, a real run and a real daemon sensor tick.

A throw-away database is created on the test server and dropped afterwards. Without a server
the tests are skipped, except in CI, where they fail.
"""

import datetime as dt
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import dagster as dg
import duckdb
import psycopg2
import pytest
from dagster._core.scheduler.instigation import InstigatorType, TickStatus

from hull_planhat_pipelines.definitions import build_definitions
from hull_planhat_pipelines.dev import stop_process_group
from hull_planhat_pipelines.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
PG_URL = os.environ.get("HULL_PLANHAT_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    try:
        admin = psycopg2.connect(PG_URL, connect_timeout=3)
    except psycopg2.OperationalError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI: {exc}")
        pytest.skip(f"no PostgreSQL server at the test URL: {exc}")
    admin.autocommit = True
    name = f"hull_planhat_test_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cur:
        cur.execute(f"create database {name}")
    try:
        yield _with_database(PG_URL, name)
    finally:
        with admin.cursor() as cur:
            cur.execute(f"drop database if exists {name} with (force)")
        admin.close()


@pytest.fixture
def production_env(
    tmp_path: Path,
    pg_url: str,
    copper_sandbox,
    planhat_sandbox,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, str]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    env = {
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_URL": pg_url,
        "HULL_PLANHAT_WAREHOUSE": str(tmp_path / "warehouse.duckdb"),
        "COPPER_API_URL": copper_sandbox.base_url,
        "COPPER_API_KEY": copper_sandbox.api_key,
        "COPPER_USER_EMAIL": copper_sandbox.user_email,
        # The Planhat sensor takes its first snapshot at once: it needs its API too.
        **planhat_sandbox.env(),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def test_a_materialization_is_stored_in_postgres_and_read_back(production_env: dict) -> None:
    instance = dg.DagsterInstance.get()
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
    defs = build_definitions(load_settings())
    today = dt.datetime.now(dt.UTC).date().replace(day=1).isoformat()  # this month
    result = defs.resolve_job_def("copper_sync").execute_in_process(
        instance=instance, partition_key=today
    )
    assert result.success
    reread = dg.DagsterInstance.get()
    assert reread.get_run_by_id(result.run_id).is_success
    event = reread.get_latest_materialization_event(dg.AssetKey(["copper", "leads"]))
    assert event is not None and event.run_id == result.run_id
    assert event.asset_materialization.partition == today
    assert "run_requests" in event.asset_materialization.metadata


def _ticks(instance: dg.DagsterInstance) -> list:
    ticks = []
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        ticks += instance.get_ticks(state.instigator_origin_id, state.selector_id)
    return ticks


@pytest.mark.timeout(600)
def test_the_daemon_ticks_the_sensor_and_its_run_succeeds(production_env: dict) -> None:
    env = {**os.environ, **production_env}
    daemon = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", "workspace.yaml"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its code server (`dagster api grpc`) is stopped with it
    )
    instance = dg.DagsterInstance.get()
    try:
        # The sensors start a chain (Copper and Planhat, then Hull and Planhat delivery, then
        # the snapshot of what was delivered), one run at a time (the warehouse pool).
        deadline = time.monotonic() + 540
        runs: list = []
        while time.monotonic() < deadline:
            ticks = [t for t in _ticks(instance) if t.status == TickStatus.SUCCESS]
            runs = instance.get_runs()
            if ticks and runs and all(r.is_finished for r in runs):
                break
            time.sleep(1)
    finally:
        stop_process_group(daemon, grace=30)
    assert ticks, "the daemon recorded no successful sensor tick"
    assert ticks[0].run_keys, "the first tick requested no run"
    assert runs and all(r.is_success for r in runs), [(r.job_name, r.status, r.tags) for r in runs]
    with duckdb.connect(production_env["HULL_PLANHAT_WAREHOUSE"], read_only=True) as conn:
        assert conn.execute("select count(*) from copper.activities").fetchone()[0] >= 0
