"""A command-line sync keeps what the process held before it out of the collector's full
passes, and spaces those passes, while it runs; it gives everything back when it ends."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from hull_planhat_pipelines import cli


@pytest.fixture(autouse=True)
def nothing_frozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


class Held:
    """A container the collector tracks (a cycle: only the collector can free it)."""

    def __init__(self) -> None:
        self.me = self


def test_what_the_process_held_is_frozen_during_the_sync_and_given_back_after() -> None:
    held = Held()
    default = gc.get_threshold()
    with cli._collector_spared():
        assert gc.get_freeze_count() > 0
        young, middle, old = gc.get_threshold()
        assert (young, middle) == default[:2]
        assert old == default[2] * cli.FULL_COLLECTION_SPACING
        del held
        gc.collect()  # a frozen cycle is not collected: the pass never walks it
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == default
    assert gc.collect() >= 1  # given back: the cycle made before the sync goes now


def test_a_process_that_froze_objects_itself_keeps_its_arrangement() -> None:
    gc.freeze()
    default = gc.get_threshold()
    with cli._collector_spared():
        assert gc.get_threshold() == default
    assert gc.get_freeze_count() > 0  # not unfrozen by the sync


def test_a_sync_runs_with_the_collector_spared(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HULL_PLANHAT_WAREHOUSE", str(tmp_path / "warehouse.duckdb"))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    default = gc.get_threshold()
    seen: list[int] = []

    def stop(*args: object, **kwargs: object) -> None:
        seen.append(gc.get_freeze_count())
        raise RuntimeError("stopped where the cycle starts")

    monkeypatch.setattr(cli, "_copper_steps", stop)
    with pytest.raises(RuntimeError, match="stopped"):
        cli.run_sync()
    assert seen and seen[0] > 0
    assert gc.get_freeze_count() == 0  # given back however the sync ended
    assert gc.get_threshold() == default
