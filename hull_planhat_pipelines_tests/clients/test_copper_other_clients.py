"""A Copper client written by others (Singer's ``tap-copper``, from PyPI) against our Copper
sandbox, over real HTTP: what it reads must match what our client reads.

This keeps the sandbox honest from the other side: a sandbox that only our client can read
would prove little. The tap's base URL is fixed to Copper's; it is pointed at the sandbox by
setting it on its client object, the only change made to it.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

import pytest

from hull_planhat_pipelines.clients.copper import CopperClient
from hull_planhat_pipelines.sandbox.copper import CopperSandbox

if os.environ.get("CI"):  # installed by the dev extras: in CI a missing tap is a failure
    importlib.import_module("tap_copper")
else:
    pytest.importorskip("tap_copper")

from tap_copper.client import Client
from tap_copper.discover import discover
from tap_copper.streams import STREAMS

TAP_PAGE_SIZE = 200


def _tap_records(sandbox: CopperSandbox, stream_name: str) -> list[dict[str, Any]]:
    config = {
        "api_key": sandbox.api_key,
        "user_email": sandbox.user_email,
        "start_date": "2020-01-01T00:00:00Z",
        "page_size": TAP_PAGE_SIZE,
    }
    catalog = discover(config)
    with Client(config) as client:
        client.base_url = sandbox.base_url
        stream = STREAMS[stream_name](client, catalog.get_stream(stream_name))
        return list(stream.get_records())


def _our_records(sandbox: CopperSandbox, name: str) -> list[dict[str, Any]]:
    with CopperClient(
        sandbox.base_url, sandbox.api_key, sandbox.user_email, requests_per_minute=None
    ) as client:
        return [r for page in client.search(name, start=None, end=None) for r in page.records]


@pytest.mark.parametrize("name", ["people", "companies"])
def test_tap_copper_reads_what_we_read(
    copper_sandbox_factory: Callable[..., CopperSandbox], name: str
) -> None:
    sandbox = copper_sandbox_factory(seed=3, scale=0.5)
    assert sandbox.count("people") > 2 * TAP_PAGE_SIZE  # the tap has to page
    assert sandbox.count("companies") < TAP_PAGE_SIZE
    theirs = _tap_records(sandbox, name)
    ours = _our_records(sandbox, name)
    assert len(theirs) == len({r["id"] for r in theirs}) == sandbox.count(name)
    assert {r["id"] for r in theirs} == {r["id"] for r in ours}
    requests = sandbox.server.recorded("POST", f"/{name}/search")
    assert all(r.status == 200 for r in requests)


def test_tap_copper_reads_one_page_of_leads_and_no_converted_ones(
    copper_sandbox_factory: Callable[..., CopperSandbox],
) -> None:
    """Two limits of that tap that ours does not share: its generic streams stop after the
    first page (a bare JSON array carries no next-page key), and it leaves converted leads
    out (it never sends ``include_converted_leads``)."""
    sandbox = copper_sandbox_factory(seed=3, scale=0.5)
    theirs = {r["id"] for r in _tap_records(sandbox, "leads")}
    ours = _our_records(sandbox, "leads")
    converted = {r["id"] for r in ours if r.get("converted_contact_id") is not None}
    assert converted and len(theirs) == TAP_PAGE_SIZE < len(ours) - len(converted)
    assert theirs < {r["id"] for r in ours} - converted
