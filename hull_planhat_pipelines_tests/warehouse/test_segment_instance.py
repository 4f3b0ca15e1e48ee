"""An incremental write evaluates its segments on the batch instance the sync left idle: the
evaluation locks that instance down, so the parse of the user predicates goes before it (after
it, the parse built an instance of its own: 15 ms of a sync)."""

from __future__ import annotations

import duckdb
import pytest

from hull_planhat_pipelines.sync.hull import batch as batch_module
from hull_planhat_pipelines.sync.hull.batch import batch
from hull_planhat_pipelines.sync.hull.changes import ProfileStore
from hull_planhat_pipelines.warehouse import hull_store
from hull_planhat_pipelines_tests.hull_support import example_settings
from hull_planhat_pipelines_tests.sync.hull.test_batch import no_idle_instance  # noqa: F401
from hull_planhat_pipelines_tests.sync.hull.test_segments import ACCOUNTS, USERS, segment_map


def test_the_segments_of_a_write_run_on_the_idle_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    with batch():
        pass  # the sync's own batch leaves its instance idle
    built: list[int | None] = []
    new_instance = batch_module._new_instance

    def counted(threads: int | None = None) -> duckdb.DuckDBPyConnection:
        built.append(threads)
        return new_instance(threads)

    monkeypatch.setattr(batch_module, "_new_instance", counted)
    held = {"user": {}, "account": {"a1": ["Customer accounts"], "a2": [], "a3": []}}
    users, accounts, moved, _ = hull_store.changed_segments(
        duckdb.connect(),
        ProfileStore(users=USERS, accounts=ACCOUNTS),
        USERS,
        ACCOUNTS,
        example_settings().segments,
        held,
    )
    assert built == []
    assert segment_map(accounts) == held["account"]
    assert moved.empty
    assert len(users) == len(USERS)
