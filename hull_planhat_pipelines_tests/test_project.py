"""The project's promises about itself: two README commands, CI runs the second."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", quick_start, flags=re.S)


def test_the_readme_has_exactly_two_commands() -> None:
    commands = _readme_commands()
    assert len(commands) == 2
    assert all("\n" not in c for c in commands)
    assert commands[0].endswith("hull-planhat demo")


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert _readme_commands()[1] in ci.splitlines()


def test_the_files_started_first_exist_and_appear_once() -> None:
    """A renamed file would silently start last again (see ``longest_first``)."""
    from hull_planhat_pipelines_tests.longest_first import LONGEST

    tests = ROOT / "hull_planhat_pipelines_tests"
    assert len(set(LONGEST)) == len(LONGEST)
    assert [f for f in LONGEST if not (tests / f).is_file()] == []


def _instance_settings(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_the_local_instance_is_the_production_one_without_postgres() -> None:
    """The root dagster.yaml (what `dagster dev` loads with nothing set) and the packaged copy
    `hull-planhat dev` uses are one file; production differs only in its storage."""
    local = _instance_settings(ROOT / "dagster.yaml")
    assert local == _instance_settings(ROOT / "hull_planhat_pipelines" / "config" / "dagster.yaml")
    production = _instance_settings(ROOT / "deploy" / "dagster.yaml")
    assert "storage" not in local
    assert production.pop("storage") == {"postgres": {"postgres_url": {"env": "DAGSTER_PG_URL"}}}
    assert production == local


def test_dagster_loads_the_repository_root_with_nothing_set(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "HULL_"))}
    env["HULL_PLANHAT_WAREHOUSE"] = str(tmp_path / "warehouse.duckdb")
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All code locations passed validation" in result.stdout + result.stderr
