"""``hull-planhat demo`` run again where it ran before: a fresh sandbox, so a fresh warehouse."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import duckdb


def _demo(folder: Path) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it, in ``folder`` (its default warehouse lives there)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("HULL_PLANHAT_WAREHOUSE", "DAGSTER_HOME")
    }
    return subprocess.run(
        [sys.executable, "-m", "hull_planhat_pipelines.cli", "demo", "--scale", "0.05"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _writes(output: str) -> list[int]:
    return [int(n) for n in re.findall(r"(\d+) write requests to Planhat", output)]


def test_a_second_demo_replaces_the_first_ones_warehouse(tmp_path: Path) -> None:
    """Each demo starts new sandboxes: over the previous demo's warehouse, its sync updated
    conversations this Planhat never had (404s) and found nothing new in Copper. Its warehouse
    is replaced, and the second run is the first one again."""
    first = _demo(tmp_path)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    second = _demo(tmp_path)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    assert "replaced the previous demo's warehouse" in second.stdout
    assert _writes(second.stdout) == _writes(first.stdout)
    assert _writes(second.stdout)[0] > 0 and _writes(second.stdout)[1] == 0
    assert "ERRORS" not in second.stdout


def test_the_demo_leaves_a_warehouse_it_did_not_make_alone(tmp_path: Path) -> None:
    warehouse = tmp_path / "data" / "warehouse.duckdb"
    warehouse.parent.mkdir()
    with duckdb.connect(str(warehouse)) as conn:
        conn.execute("create table kept as select 42 as answer")
    refused = _demo(tmp_path)
    assert refused.returncode == 2
    assert "the demo did not make" in refused.stderr
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        assert conn.execute("select answer from kept").fetchall() == [(42,)]
