"""A sync makes the collector's full passes rarer while it runs, whichever way it runs (the
command line's sync, or a run Dagster launches), and gives the process its default back when it
ends, however it ends."""

from __future__ import annotations

import gc
from pathlib import Path

import dagster as dg
import pytest

from hull_planhat_pipelines import cli
from hull_planhat_pipelines.collector import FULL_COLLECTION_SPACING, collector_spared
from hull_planhat_pipelines.resources import WarehouseResource


def _spaced(default: tuple[int, int, int]) -> tuple[int, int, int]:
    return (default[0], default[1], default[2] * FULL_COLLECTION_SPACING)


def test_full_passes_are_spaced_during_the_sync_and_the_default_comes_back() -> None:
    default = gc.get_threshold()
    with collector_spared():
        young, middle, old = gc.get_threshold()
        assert (young, middle) == default[:2]  # the young generations as usual
        assert old == default[2] * FULL_COLLECTION_SPACING
        assert gc.get_freeze_count() == 0  # nothing is kept from the collector
    assert gc.get_threshold() == default


def test_spacing_inside_spacing_spaces_once_and_the_outermost_gives_the_default_back() -> None:
    default = gc.get_threshold()
    with collector_spared():
        with collector_spared():  # a run executed by the command line's sync
            assert gc.get_threshold() == _spaced(default)  # not spaced twice over
        assert gc.get_threshold() == _spaced(default)  # the sync is still running
    assert gc.get_threshold() == default


def test_a_sync_runs_with_spaced_full_passes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HULL_PLANHAT_WAREHOUSE", str(tmp_path / "warehouse.duckdb"))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    default = gc.get_threshold()
    seen: list[tuple[int, int, int]] = []

    def stop(*args: object, **kwargs: object) -> None:
        seen.append(gc.get_threshold())
        raise RuntimeError("stopped where the cycle starts")

    monkeypatch.setattr(cli, "_copper_steps", stop)
    with pytest.raises(RuntimeError, match="stopped"):
        cli.run_sync()
    assert seen == [_spaced(default)]
    assert gc.get_threshold() == default  # given back however the sync ended


@pytest.mark.parametrize("fails", [False, True], ids=["succeeds", "fails"])
def test_a_run_dagster_launches_spaces_full_passes_in_every_step(
    tmp_path: Path, fails: bool
) -> None:
    """The daemon's, a sensor's, a schedule's or the UI's run never goes through the command
    line: the warehouse resource, which every step of the project uses, spaces them for the
    run (its steps share one process: the project's executor is in-process)."""
    default = gc.get_threshold()
    seen: dict[str, tuple[int, int, int]] = {}

    @dg.asset
    def upstream(warehouse: WarehouseResource) -> None:
        seen["upstream"] = gc.get_threshold()

    @dg.asset(deps=[upstream])
    def downstream(warehouse: WarehouseResource) -> None:
        seen["downstream"] = gc.get_threshold()
        if fails:
            raise RuntimeError("the step failed")

    result = dg.materialize(
        [upstream, downstream],
        resources={"warehouse": WarehouseResource(database=str(tmp_path / "w.duckdb"))},
        raise_on_error=False,
    )
    assert result.success is not fails
    assert seen == {"upstream": _spaced(default), "downstream": _spaced(default)}
    assert gc.get_threshold() == default  # the run's end gives the default back


def test_every_step_of_the_project_uses_the_warehouse_resource() -> None:
    """What spaces a launched run's full passes: a run of steps without it would not be."""
    from hull_planhat_pipelines.definitions import defs

    without = [
        [key.to_user_string() for key in assets.keys]
        for assets in defs.resolve_asset_graph().assets_defs
        if "warehouse" not in assets.required_resource_keys
    ]
    assert without == []
