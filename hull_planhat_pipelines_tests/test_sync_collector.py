"""A command-line sync makes the collector's full passes rarer while it runs, and gives the
process its default back when it ends, however it ends."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from hull_planhat_pipelines import cli


def test_full_passes_are_spaced_during_the_sync_and_the_default_comes_back() -> None:
    default = gc.get_threshold()
    with cli._collector_spared():
        young, middle, old = gc.get_threshold()
        assert (young, middle) == default[:2]  # the young generations as usual
        assert old == default[2] * cli.FULL_COLLECTION_SPACING
        assert gc.get_freeze_count() == 0  # nothing is kept from the collector
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
    assert seen == [(default[0], default[1], default[2] * cli.FULL_COLLECTION_SPACING)]
    assert gc.get_threshold() == default  # given back however the sync ended
