"""A destination reads and maps only the source rows the memo cannot vouch for: rows whose hash
maps to what Planhat was last sent are left out in SQL, and nothing else is."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from hull_planhat_pipelines.settings import DestinationSettings
from hull_planhat_pipelines.sync.planhat.destinations import SOURCE_HASH, map_rows, select_records
from hull_planhat_pipelines.warehouse import attachments, deliveries
from hull_planhat_pipelines.warehouse.connection import connect
from hull_planhat_pipelines.warehouse.deliveries import FINGERPRINTS
from hull_planhat_pipelines.warehouse.destination_inputs import delivery_state, destination_inputs
from hull_planhat_pipelines.warehouse.destination_memo import (
    MAPPING_VERSION,
    MEMO,
    remember_mapped,
    row_groups,
    source_columns,
    source_digest,
    vouched_hashes,
)
from hull_planhat_pipelines_tests.warehouse_support import cached_bytes

PINNED_FINGERPRINT = "f06bde2861aa5c68ee4eb10e9ad6dd5e79e3d73f9ec6a09f9d2342cefed64e99"
NOTES = DestinationSettings(
    name="conversations",
    method="POST",
    path="/conversations",
    # a trailing comment and semicolon: the memo wraps the operator's SQL as it is written
    source_sql="select event_id, body, noted_at from notes order by event_id; -- every note",
)


def _notes(path: str, count: int, body: str) -> str:
    """A warehouse at ``path`` whose ``notes`` are ``count`` rows, each ``body`` (SQL of ``i``)."""
    with duckdb.connect(path) as conn:
        conn.execute("create table notes (event_id integer, body varchar, noted_at timestamptz)")
        conn.execute(
            f"insert into notes select i, {body}, timestamptz '2026-01-01 00:00:00+00'"
            f" + to_minutes(i) from range(1, {count + 1}) t(i)"
        )
    return path


@pytest.fixture
def database(tmp_path: Path) -> str:
    return _notes(str(tmp_path / "warehouse.duckdb"), 5, "'note ' || i")


def _cycle(
    database: str, destination: DestinationSettings = NOTES, *, force: bool = False
) -> tuple[list[str], pd.DataFrame]:
    """One destination run as the asset wires it, with every record delivered: the keys read
    and mapped, and the records selected to send."""
    inputs = destination_inputs(database, destination, every_row_asked=force)
    assert inputs is not None
    mapped, _ = map_rows(inputs.source, destination)
    state = delivery_state(database, destination.name, mapped["key"].tolist())
    remember_mapped(database, destination.name, mapped, whole=not inputs.remembered)
    records, _ = select_records(
        mapped, destination, state.fingerprints, force=force, planhat_ids=state.planhat_ids
    )
    _delivered(database, records)
    return sorted(mapped["key"]), records


def _delivered(database: str, records: pd.DataFrame) -> None:
    if records.empty:
        return
    fresh = records[["target", "key", "fingerprint", "fields"]].assign(
        delivered_at=pd.Timestamp(dt.datetime.now(dt.UTC)), planhat_id=None
    )
    with duckdb.connect(database) as conn:
        deliveries._ensure_tables(conn)
        deliveries._upsert_fingerprints(conn, fresh)


def _edit(database: str, sql: str) -> None:
    with duckdb.connect(database) as conn:
        conn.execute(sql)


def test_only_rows_that_may_have_changed_are_read_and_mapped(database: str) -> None:
    assert destination_inputs(database, NOTES).rows == 5  # type: ignore[union-attr]
    keys, records = _cycle(database)
    assert keys == ["1", "2", "3", "4", "5"] and len(records) == 5  # first run: all of them
    assert SOURCE_HASH not in records.columns
    assert SOURCE_HASH not in records["payload"].iloc[0]  # never sent

    keys, records = _cycle(database)
    assert keys == [] and records.empty  # nothing changed: nothing read
    _edit(database, "update notes set body = 'edited' where event_id = 2")
    keys, records = _cycle(database)
    assert keys == ["2"] and records["change"].tolist() == ["changed"]
    _edit(database, "insert into notes values (6, 'new', now())")
    inputs = destination_inputs(database, NOTES)
    assert inputs is not None and inputs.rows == 6 and len(inputs.source) == 1
    assert _cycle_keys_after_delete(database) == []  # a removed row reads nothing


def _cycle_keys_after_delete(database: str) -> list[str]:
    _edit(database, "delete from notes where event_id = 6")
    return _cycle(database)[0]


def test_the_memo_vouches_only_for_what_was_delivered(database: str) -> None:
    _cycle(database)
    # a record whose delivery Planhat refused keeps its older fingerprint: read again
    _edit(database, f"update {FINGERPRINTS} set fingerprint = 'refused' where key = '3'")
    keys, records = _cycle(database)
    assert keys == ["3"] and records["key"].tolist() == ["3"]
    # a fingerprint the settlement dropped: read again, sent as new
    _edit(database, f"delete from {FINGERPRINTS} where key = '4'")
    keys, records = _cycle(database)
    assert keys == ["4"] and records["change"].tolist() == ["new"]
    # a lost memo costs mapping, never a send
    _edit(database, f"delete from {MEMO}")
    keys, records = _cycle(database)
    assert len(keys) == 5 and records.empty
    assert _cycle(database)[0] == []


def test_a_memo_entry_without_a_hash_vouches_for_nothing(database: str) -> None:
    """A null among the vouched hashes (SQL's ``in`` would make a hash not found unknown,
    not false) vouches for no row: the edited one is read again."""
    _cycle(database)
    _edit(database, f"insert into {MEMO} select target, key, null, fingerprint from {FINGERPRINTS}")
    _edit(database, "update notes set body = 'edited' where event_id = 3")
    keys, records = _cycle(database)
    assert keys == ["3"] and records["key"].tolist() == ["3"]


def test_other_settings_or_a_forced_send_read_every_row(database: str) -> None:
    _cycle(database)
    keys, records = _cycle(database, NOTES.model_copy(update={"exclude": ["noted_at"]}))
    assert len(keys) == 5 and len(records) == 5  # other payloads: all mapped and changed
    keys, records = _cycle(database, force=True)
    assert len(keys) == 5 and len(records) == 5
    assert set(records["change"]) == {"changed"}  # the exclusion above was delivered last


def test_the_rows_of_one_key_are_read_together_and_the_same_row_wins(database: str) -> None:
    _edit(database, "insert into notes values (2, 'second row of 2', null)")
    keys, records = _cycle(database)
    [winner] = records.loc[records["key"] == "2", "payload"]
    assert "second row of 2" in winner  # the last row of a key wins
    assert _cycle(database)[0] == []  # both rows vouched for: neither read
    _edit(
        database,
        "update notes set body = 'edited first row' where event_id = 2 and noted_at is not null",
    )
    keys, records = _cycle(database)
    assert keys == ["2"] and records.empty  # both rows read again; the same row wins, unchanged
    assert _cycle(database)[0] == []  # and nothing flips back and forth


def test_keys_and_hashes_are_read_first_and_a_keyless_row_is_not_lost(database: str) -> None:
    """The memo's verdict comes from the keys and hashes alone; the rows of the keys it cannot
    vouch for are read after. A row with no key (its group is its hash) whose hash differs at
    each reading (``random()``) is still read: never left out between the two readings."""
    keyless = NOTES.model_copy(
        update={"source_sql": "select body, random()::varchar as drawn from notes"}
    )
    for _ in range(3):
        keys, records = _cycle(database, keyless)
        assert len(keys) == 5 and len(records) == 5  # every row differs at every reading
    inputs = destination_inputs(database, keyless)
    assert inputs is not None and inputs.remembered and inputs.rows == 5
    assert len(inputs.source) == 5


def test_a_source_naming_a_column_as_the_wrapping_does_is_read_whole(database: str) -> None:
    clashing = NOTES.model_copy(
        update={"source_sql": "select event_id, body as _destination_row from notes"}
    )
    for _ in range(2):
        inputs = destination_inputs(database, clashing)
        assert inputs is not None and not inputs.remembered and len(inputs.source) == 5
        mapped, _ = map_rows(inputs.source, clashing)
        remember_mapped(database, clashing.name, mapped, whole=True)


def test_a_column_whose_type_changes_reads_every_row(database: str) -> None:
    _cycle(database)
    as_text = NOTES.model_copy(
        update={"source_sql": "select event_id, body, noted_at::varchar as noted_at from notes"}
    )
    inputs = destination_inputs(database, as_text)
    assert inputs is not None and inputs.remembered and len(inputs.source) == 5


def test_a_rows_mapping_is_pinned_to_the_memo_version() -> None:
    """If this fingerprint changes, rows map to other payloads than the memo remembers:
    raise ``MAPPING_VERSION`` with it."""
    row = pd.DataFrame([{"event_id": 7, "body": "pinned", "amount": 1200.0, "gone": None}])
    mapped, _ = map_rows(row, NOTES)
    assert MAPPING_VERSION == "1"
    assert mapped["fingerprint"].tolist() == [PINNED_FINGERPRINT]


def _cached_by_alone(path: str, sql: str, params: list[object]) -> int:
    """The file's blocks one query leaves cached, run alone on a fresh attachment."""
    with connect(path, read_only=True) as conn:
        conn.execute(sql, params).fetchall()
        return cached_bytes(path)


def test_the_memo_and_the_source_are_never_cached_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run locked down, the source SQL's connection cannot let cached blocks go: the memo's
    hashes are read before the lock down and their blocks dropped, so the most the file's
    cache holds is what the larger of the two reads alone leaves, not both."""
    path = _notes(str(tmp_path / "warehouse.duckdb"), 60_000, "md5(i::varchar) || repeat('n', 100)")
    _cycle(path)  # every note delivered: the memo and the fingerprints hold 60,000 keys
    with connect(path, read_only=True) as conn:
        columns = source_columns(conn, NOTES.source_sql)
    names, digest = [n for n, _ in columns], source_digest(NOTES, columns)
    memo_alone = _cached_by_alone(path, vouched_hashes(), [NOTES.name])
    source_alone = _cached_by_alone(path, row_groups(NOTES.source_sql, NOTES, names), [digest])
    assert min(memo_alone, source_alone) > 1_000_000  # each read caches blocks of its own

    cached: list[int] = []
    drop = attachments._drop_file_blocks

    def counted(attachment: attachments._Attachment, **kwargs: object) -> None:
        cached.append(cached_bytes(path))
        drop(attachment, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(attachments, "LOOK_AFTER_SECONDS", 0.0)  # looked at after each one
    monkeypatch.setattr(attachments, "_drop_file_blocks", counted)
    inputs = destination_inputs(path, NOTES)
    assert inputs is not None and inputs.remembered
    assert inputs.rows == 60_000 and inputs.source.empty
    assert max(cached) <= max(memo_alone, source_alone) + 2**18, (
        max(cached),
        memo_alone,
        source_alone,
    )
