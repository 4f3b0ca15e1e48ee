"""The Dagster UI in a real browser: ``hull-planhat dev`` on a free port, driven through Chromium.

The session runs as a user starts it (the sandbox, ``dagster dev``: webserver, daemon, code
servers, runs) with a temporary instance and warehouse. The browser is the system's Chromium
(Playwright's own browser download is not used). Screenshots of every step are kept when the
test fails, in a folder named in the failure. Every process of the session is stopped at the
end, and the test fails if one outlives it. Without Chromium or Playwright the test is skipped,
except in CI, where it fails.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pytest
import requests
import yaml
from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter

from hull_planhat_pipelines.dev import LOCAL_INSTANCE_CONFIG
from hull_planhat_pipelines.settings import default_config_path
from hull_planhat_pipelines_tests.processes import descendants, kill, wait_gone

CHROMIUM = Path("/usr/bin/chromium")
STARTUP_SECONDS = 240
CHAIN_SECONDS = 420
SCALE = "0.05"
"""The sandboxes' smallest useful size (every seeded edge case, tens of records)."""
COPPER_DAYS = 7
"""Copper's data starts this many days back: the first start fetches a week's records, in the
yearly partition holding it (two around New Year), not years of them."""
UNFINISHED = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]

pytestmark = pytest.mark.timeout(1200)


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"the browser test needs {reason} in CI (.ci/run installs it)")
    pytest.skip(f"no {reason}")


# -- processes -----------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class DevSession:
    url: str
    home: Path
    started: dt.datetime
    output: list[str] = field(default_factory=list)

    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.from_config(str(self.home))


def _quiet_config(folder: Path) -> Path:
    """The sandbox configuration with the Copper poll and the Planhat fetch once a day, so that
    within the test no run starts unless the test (or what it triggered) starts it; Copper's
    data spans a week back and a day ahead (the current year's partition; on December 31 the
    next year's too), so the start-up runs are short."""
    config = yaml.safe_load(default_config_path().read_text())
    config["copper"]["poll_minutes"] = 1440
    config["planhat"]["fetch_interval_minutes"] = 1440
    today = dt.datetime.now(dt.UTC).date()
    config["copper"]["start_date"] = (today - dt.timedelta(days=COPPER_DAYS)).isoformat()
    config["copper"]["activity_horizon_days"] = 1
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def dev_session(tmp_path: Path) -> Iterator[DevSession]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(LOCAL_INSTANCE_CONFIG, home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "HULL_"))}
    env.update(
        DAGSTER_HOME=str(home),
        HULL_PLANHAT_WAREHOUSE=str(tmp_path / "warehouse.duckdb"),
        HULL_PLANHAT_CONFIG=str(_quiet_config(tmp_path)),
    )
    port = _free_port()
    command = [
        str(Path(sys.executable).parent / "hull-planhat"),
        *("dev", "--port", str(port), "--scale", SCALE),
    ]
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    session = DevSession(f"http://127.0.0.1:{port}", home, dt.datetime.now(dt.UTC))

    def read() -> None:
        for line in process.stdout:  # type: ignore[union-attr]
            session.output.append(line.rstrip())
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    seen: set[tuple[int, str]] = set()
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while not any("Dagster UI ready" in line for line in session.output):
            assert process.poll() is None, "\n".join(session.output)
            assert time.monotonic() < deadline, "\n".join(session.output)
            with contextlib.suppress(queue.Empty):
                lines.get(timeout=1)
            seen |= descendants(process.pid)
        yield session
    finally:
        seen |= descendants(process.pid)
        os.killpg(process.pid, signal.SIGINT)
        try:
            code = process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            code = process.wait()
        left = wait_gone(seen, 30)
        kill(left)
        assert not left, f"processes outlived `hull-planhat dev`: {left}"
        assert code == 0, "\n".join(session.output)
        assert "stopped: Dagster UI, daemon and sandbox" in session.output[-1]


# -- runs, read from the session's instance -------------------------------------------------
def _runs_of(instance: dg.DagsterInstance, key: str) -> list:
    """Run records that materialized ``key``, oldest first."""
    records = instance.fetch_materializations(dg.AssetKey(key.split("/")), limit=1000).records
    run_ids = list(dict.fromkeys(r.run_id for r in records))
    runs = [instance.get_run_record_by_id(run_id) for run_id in run_ids]
    return sorted((r for r in runs if r), key=lambda r: r.create_timestamp)


def _unfinished(instance: dg.DagsterInstance) -> int:
    return len(instance.get_run_records(RunsFilter(statuses=UNFINISHED)))


def _wait(
    what: str, condition: Callable[[], object], seconds: float, screenshot: Callable[[str], Path]
):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.5)
    path = screenshot(f"timeout-{what.replace(' ', '-')}")
    raise AssertionError(f"{what}: not within {seconds:.0f}s (screenshot {path})")


def _ended(run_record) -> float:
    return run_record.end_time or time.time()


FOLLOW_TICK = """query {
  sensorOrError(sensorSelector: {repositoryLocationName: "hull_planhat_pipelines",
      repositoryName: "__repository__", sensorName: "downstream_sensor"}) {
    ... on Sensor { sensorState { ticks(limit: 1) { status timestamp } } }
  }
}"""


def _last_follow_tick(url: str) -> dict | None:
    """The newest tick of the sensor that launches what follows a run, from the UI's GraphQL."""
    answer = requests.post(f"{url}/graphql", json={"query": FOLLOW_TICK}, timeout=30)
    answer.raise_for_status()
    sensor = answer.json()["data"]["sensorOrError"]
    ticks = (sensor.get("sensorState") or {}).get("ticks") or []
    return ticks[0] if ticks else None


def _settled(instance: dg.DagsterInstance, url: str) -> bool:
    """The start-up runs are through: Hull ran, nothing is pending, and the follow sensor, on a
    tick begun after the last run ended, asked for nothing more (no fixed quiet time)."""
    if _unfinished(instance) or not _runs_of(instance, "hull/users"):
        return False
    ends = [r.end_time for r in instance.get_run_records() if r.end_time]
    tick = _last_follow_tick(url)
    return bool(ends and tick and tick["status"] == "SKIPPED" and tick["timestamp"] > max(ends))


# -- the test ------------------------------------------------------------------------------
@pytest.fixture
def browser_page():
    if not CHROMIUM.exists():
        _missing(f"Chromium at {CHROMIUM}")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        _missing("Playwright (the dev extras)")
    # Assertions poll as long as actions wait: the code location may still be loading.
    expect.set_options(timeout=60_000)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            # Dagster's community sign-up dialog covers the first page a new browser opens.
            page.add_locator_handler(
                page.get_by_role("button", name="Skip"), lambda skip: skip.click()
            )
            page.set_default_timeout(60_000)
            yield page
        finally:
            browser.close()


def test_the_ui_shows_the_graph_and_a_launch_from_it_carries_through(
    browser_page, dev_session: DevSession
) -> None:
    from playwright.sync_api import expect

    page = browser_page
    shots = Path(tempfile.mkdtemp(prefix="ui-screenshots-"))
    step = iter(range(1, 100))

    def screenshot(name: str) -> Path:
        path = shots / f"{next(step):02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    passed = False
    try:
        # The asset graph renders: the Copper group's five sources.
        page.goto(f"{dev_session.url}/locations/hull_planhat_pipelines/asset-groups/copper")
        for name in ("leads", "people", "companies", "opportunities", "activities"):
            expect(page.get_by_text(name, exact=True).first).to_be_visible()
        screenshot("copper-group")

        instance = dev_session.instance()
        _wait(
            "the start-up runs settle",
            lambda: _settled(instance, dev_session.url),
            CHAIN_SECONDS,
            screenshot,
        )

        # Materialize the Copper group from the graph: the latest (yearly) partition.
        clicked = time.time()
        page.get_by_role("button", name="Materialize all…").click()
        page.get_by_role("button", name="Latest", exact=True).click()
        screenshot("launch-dialog")
        page.get_by_role("button", name=re.compile(r"^Launch (\d+ )?(backfill|runs?)$")).click()

        def clicked_run():
            runs = [
                r
                for r in _runs_of(instance, "copper/leads")
                if r.create_timestamp.timestamp() >= clicked - 1
            ]
            return runs[0] if runs and runs[0].dagster_run.is_finished else None

        copper_run = _wait("the Copper run", clicked_run, CHAIN_SECONDS, screenshot)
        assert copper_run.dagster_run.is_success, copper_run.dagster_run.status

        # The asset page: metadata of the materialization (columns, counts) and the checks.
        page.goto(f"{dev_session.url}/assets/copper/leads")
        expect(page.get_by_text("run_requests", exact=True).first).to_be_visible()
        expect(page.get_by_text("Columns").first).to_be_visible()
        expect(page.get_by_text("primary_email", exact=True).first).to_be_visible()
        screenshot("leads-overview")
        page.get_by_text("Checks", exact=True).first.click()
        expect(page.get_by_text("unique_ids_per_partition").first).to_be_visible()
        screenshot("leads-checks")

        # The Runs page, where a screenshot shows what followed (or did not).
        page.goto(f"{dev_session.url}/runs")
        _assert_the_chain_follows(instance, copper_run, screenshot)
        page.reload()
        screenshot("runs")
        passed = True
    finally:
        if passed:
            shutil.rmtree(shots, ignore_errors=True)
        else:
            screenshot("failure")
            print(f"screenshots of the browser test: {shots}")


def _assert_the_chain_follows(instance, copper_run, screenshot) -> None:
    """Hull, then Planhat, run after the launched Copper run, with no click, and succeed."""
    copper_end = _ended(copper_run)

    def after(key: str, moment: float):
        runs = [r for r in _runs_of(instance, key) if r.create_timestamp.timestamp() > moment]
        return runs[0] if runs and runs[0].dagster_run.is_finished else None

    hull = _wait(
        "a Hull run after Copper", lambda: after("hull/users", copper_end), 240, screenshot
    )
    # the delivery may be a step of the same run as Hull (one downstream run a cycle)
    delivery = _wait(
        "a Planhat delivery from Hull's run or after it",
        lambda: after("planhat/deliveries", hull.create_timestamp.timestamp() - 0.001),
        240,
        screenshot,
    )
    assert hull.dagster_run.is_success, hull.dagster_run.status
    assert delivery.dagster_run.is_success, delivery.dagster_run.status
