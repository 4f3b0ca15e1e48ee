"""Records of a configured destination (pure): stable keys and each record's call."""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd

from hull_planhat_pipelines.settings import DestinationSettings
from hull_planhat_pipelines.sync.planhat.destinations import ON_CHANGE_IGNORED, destination_records
from hull_planhat_pipelines_tests.planhat_support import advance_fingerprints

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _destination(**kw: object) -> DestinationSettings:
    options = {"name": "notes", "method": "POST", "path": "/conversations", "source_sql": "x"}
    return DestinationSettings.model_validate({**options, **kw})


def _source(*texts: str) -> pd.DataFrame:
    return pd.DataFrame(
        {"event_id": [f"e{i}" for i in range(len(texts))], "description": list(texts)}
    )


def _delivered(records: pd.DataFrame) -> pd.DataFrame:
    outcomes = records[["target", "key"]].assign(status="created")
    return advance_fingerprints(None, outcomes, records, NOW)


def test_new_records_get_a_stable_external_id_and_are_created() -> None:
    records, _ = destination_records(_source("a", "b"), _destination(), None)
    payloads = [json.loads(p) for p in records["payload"]]
    assert [p["externalId"] for p in payloads] == ["notes-e0", "notes-e1"]
    assert records["method"].tolist() == ["POST", "POST"]
    assert records["read_back"].tolist() == [None, None]
    again, _ = destination_records(_source("a", "b"), _destination(), None)
    assert again["payload"].tolist() == records["payload"].tolist()  # same key, same record


def test_a_record_in_doubt_is_read_back_by_its_external_id_first() -> None:
    records, _ = destination_records(_source("a"), _destination(), None, in_doubt={"e0"})
    assert records["read_back"].tolist() == ["/conversations/extid-notes-e0"]


def test_an_edited_record_updates_what_it_created_or_follows_on_change() -> None:
    first, _ = destination_records(_source("a"), _destination(), None)
    fingerprints = _delivered(first)
    edited, _ = destination_records(
        _source("b"), _destination(), fingerprints, planhat_ids={"e0": "0123456789abcdef01234567"}
    )
    assert edited[["method", "path"]].values.tolist() == [
        ["PUT", "/conversations/0123456789abcdef01234567"]
    ]
    unknown_id, _ = destination_records(_source("b"), _destination(), fingerprints)
    assert unknown_id["method"].tolist() == ["POST"]
    assert unknown_id["read_back"].tolist() == ["/conversations/extid-notes-e0"]
    created, _ = destination_records(_source("b"), _destination(on_change="create"), fingerprints)
    assert created["method"].tolist() == ["POST"]
    assert json.loads(created["payload"].iloc[0])["externalId"].startswith("notes-e0-")
    ignored, events = destination_records(
        _source("b"), _destination(on_change="ignore"), fingerprints
    )
    assert ignored.empty and [e.reason for e in events] == [ON_CHANGE_IGNORED]


def test_a_keyed_path_or_a_stable_key_turned_off_adds_no_external_id() -> None:
    phase = _destination(method="PATCH", path="/companies/{external_id}")
    rows, _ = destination_records(pd.DataFrame({"external_id": ["A"], "phase": ["x"]}), phase, None)
    assert json.loads(rows["payload"].iloc[0]) == {"external_id": "A", "phase": "x"}
    assert "method" not in rows.columns
    plain, _ = destination_records(_source("a"), _destination(stable_key=False), None)
    assert "externalId" not in json.loads(plain["payload"].iloc[0])
