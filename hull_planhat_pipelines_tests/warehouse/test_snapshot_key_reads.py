"""Reads of the latest snapshot narrowed to a few payload keys find exactly the keys a read of
every record finds among them: the narrowing tests the stored columns (an email as typed, with
spaces and capitals; a blank external id) without building every record's key."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from hull_planhat_pipelines.warehouse.deliveries import (
    snapshot_keys,
    snapshot_writes,
    unseen_by_snapshot,
)

ENDUSERS = [  # external_id, email
    ("u1", "x@example.com"),
    (None, " Ann@Example.COM "),
    ("", "bob@example.com"),
    (" u3 ", ""),
    ("u4", None),
    (None, "   "),
]
COMPANIES = ["a", "", " b", None]


@pytest.fixture
def database(tmp_path: Path) -> str:
    path = str(tmp_path / "warehouse.duckdb")
    with duckdb.connect(path) as conn:
        conn.execute("create schema planhat_current")
        conn.execute(
            "create table planhat_current.endusers (external_id varchar, email varchar,"
            " updated_at timestamptz, _fetched_at timestamptz)"
        )
        conn.executemany(
            "insert into planhat_current.endusers values (?, ?, now(), now())", ENDUSERS
        )
        conn.execute(
            "create table planhat_current.companies (external_id varchar,"
            " updated_at timestamptz, _fetched_at timestamptz)"
        )
        conn.executemany(
            "insert into planhat_current.companies values (?, now(), now())",
            [(c,) for c in COMPANIES],
        )
    return path


ASKED = {
    "endusers": [
        "external_id:u1",
        "email:x@example.com",
        "email:ann@example.com",
        "email:Ann@Example.COM",
        "email:bob@example.com",
        "external_id:",
        "email:",
        "external_id:u3",
        "external_id: u3 ",
        "external_id:u4",
        "email:nobody@example.com",
        "u1",
    ],
    "companies": ["a", "", " b", "b", "c", "external_id:a"],
}


@pytest.mark.parametrize("target", ["endusers", "companies"])
def test_narrowed_reads_find_what_a_whole_read_finds_among_the_keys(
    database: str, target: str
) -> None:
    asked = ASKED[target]
    with duckdb.connect(database) as conn:
        every, _ = snapshot_keys(conn, target)
        narrowed, _ = snapshot_keys(conn, target, asked)
        written = snapshot_writes(conn, target, asked)
    expected = every & set(asked)
    assert expected  # the case is not empty
    assert narrowed == expected
    assert set(written) == expected
    assert unseen_by_snapshot(database, target, asked) == len(set(asked) - expected)


def test_emails_are_matched_trimmed_and_lower_cased_and_blanks_answer_to_nothing(
    database: str,
) -> None:
    with duckdb.connect(database) as conn:
        found, _ = snapshot_keys(conn, "endusers", ASKED["endusers"])
    assert found == {
        "external_id:u1",
        "email:x@example.com",
        "email:ann@example.com",
        "email:bob@example.com",
        "external_id: u3 ",  # an external id is matched as stored
        "external_id:u4",
    }
