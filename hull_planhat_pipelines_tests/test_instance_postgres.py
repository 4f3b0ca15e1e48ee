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
import yaml
from dagster._core.scheduler.instigation import InstigatorType, TickStatus

from hull_planhat_pipelines.definitions import build_definitions
from hull_planhat_pipelines.dev import stop_process_group
from hull_planhat_pipelines.orchestration import copper_partition_key
from hull_planhat_pipelines.settings import CONFIG_ENV_VAR, default_config_path, load_settings

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
    today = copper_partition_key(dt.datetime.now(dt.UTC).date())  # this year
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


def _copper_poll(instance: dg.DagsterInstance) -> tuple[list, list]:
    """The Copper poll's successful ticks that requested runs, and those runs."""
    ticks = []
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        if state.instigator_name == "copper_incremental_sensor":
            ticks += [
                t
                for t in instance.get_ticks(state.instigator_origin_id, state.selector_id)
                if t.status == TickStatus.SUCCESS and t.run_ids
            ]
    run_ids = [run_id for tick in ticks for run_id in tick.run_ids]
    runs = [run for run_id in run_ids if (run := instance.get_run_by_id(run_id))]
    return ticks, runs


@pytest.mark.timeout(300)
def test_the_daemon_ticks_the_sensor_and_its_run_succeeds(
    production_env: dict, copper_sandbox, tmp_path: Path
) -> None:
    """The daemon on the PostgreSQL instance ticks the Copper poll, which on empty tables asks
    for every Copper object; that run succeeds and fills the warehouse. Only that run is
    awaited: what follows it (the whole chain) is the browser test's. Copper's partitions
    start three days ago (a few days, not years, to fetch) and every lead, person and company
    was just edited, so all of them must arrive."""
    config = yaml.safe_load(default_config_path().read_text())
    today = dt.datetime.now(dt.UTC).date()
    config["copper"]["start_date"] = (today - dt.timedelta(days=3)).isoformat()
    config["copper"]["activity_horizon_days"] = 1
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    edited = ("leads", "people", "companies")
    for name in edited:
        copper_sandbox.touch(name, [r["id"] for r in copper_sandbox.records(name)])
    env = {**os.environ, **production_env, CONFIG_ENV_VAR: str(tmp_path / "config.yaml")}
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        daemon = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", "workspace.yaml"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its code server (`dagster api grpc`) is stopped with it
        )
    instance = dg.DagsterInstance.get()
    ticks: list = []
    runs: list = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            ticks, runs = _copper_poll(instance)
            if runs and all(r.is_finished for r in runs):
                break
            time.sleep(0.5)
    finally:
        stop_process_group(daemon, grace=5)  # no graceful end is under test here
    output = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
    assert ticks, f"the daemon recorded no Copper poll tick that requested a run:\n{output}"
    assert runs and all(r.is_finished for r in runs), [(r.job_name, r.status) for r in runs]
    assert all(r.is_success for r in runs), [(r.job_name, r.status, r.tags) for r in runs]
    assert runs[0].tags["hull_planhat/trigger"] == "first start"
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    with duckdb.connect(production_env["HULL_PLANHAT_WAREHOUSE"], read_only=True) as conn:
        for name in edited:
            stored = conn.execute(f"select count(distinct id) from copper.{name}").fetchone()[0]
            assert stored == copper_sandbox.count(name) > 0, name
