"""The Copper client over real HTTP: against the Copper sandbox, and against a small stub
endpoint (``copper_stub``) for the result cap and the throttle. No test sleeps for real time."""

from __future__ import annotations

import datetime as dt
import json
import math
import random
from collections.abc import Callable, Iterator
from typing import Any

import pandas as pd
import pytest

from hull_planhat_pipelines.clients import copper as copper_client
from hull_planhat_pipelines.clients.copper import (
    METADATA_CALLS,
    CopperCapError,
    CopperClient,
    MetadataCache,
    Page,
    search_requests,
)
from hull_planhat_pipelines.clients.http import (
    ApiAuthError,
    ApiError,
    ApiResponseError,
    RetryPolicy,
)
from hull_planhat_pipelines.sandbox.copper import CopperSandbox
from hull_planhat_pipelines.sync.copper.records import MISSING, field_value, records_frame
from hull_planhat_pipelines_tests.copper_stub import FakeTime, StubCopper

KEY, EMAIL = "stub-key-123", "stub@example.com"
T0 = 1_704_067_200  # 2024-01-01T00:00:00Z
CAP, PAGE = 50, 10


def _stub_client(stub: StubCopper, time: FakeTime | None = None, **kw: Any) -> CopperClient:
    time = time or FakeTime()
    kw.setdefault("requests_per_minute", None)
    return CopperClient(
        stub.server.base_url, KEY, EMAIL, sleeper=time.sleep, clock=time.clock, **kw
    )


def _ids(pages: list[Page]) -> list[int]:
    return [r["id"] for p in pages for r in p.records]


@pytest.fixture
def small_cap(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(copper_client, "SEARCH_RESULT_CAP", CAP)
    return CAP


@pytest.fixture
def stubs() -> Iterator[list[StubCopper]]:
    made: list[StubCopper] = []
    yield made
    for stub in made:
        stub.close()


def _leads_with_ties() -> list[dict[str, Any]]:
    """137 leads; tie groups of 1-12 records per second, one straddling each cap boundary."""
    rng = random.Random(7)
    leads, second = [], T0
    while len(leads) < 137:
        for _ in range(rng.randint(1, 12)):
            leads.append({"id": 1000 + len(leads), "date_modified": second})
        second += rng.randint(1, 3)
    return leads[:137]


# -- the 100,000 cap (scaled down to 50) ------------------------------------------------------
def test_cap_restarts_at_the_last_date_and_dedupes_the_boundary(
    small_cap: int, stubs: list[StubCopper]
) -> None:
    leads = _leads_with_ties()
    stub = StubCopper({"leads": leads}, cap=small_cap)
    stubs.append(stub)
    with _stub_client(stub, page_size=PAGE) as client:
        pages = list(client.search("leads", start=None, end=None))
    ids = _ids(pages)
    assert sorted(ids) == [r["id"] for r in leads]  # every record, once
    dates = [r["date_modified"] for p in pages for r in p.records]
    assert dates == sorted(dates)
    bodies = stub.bodies("leads")
    assert max(b["page_number"] for b in bodies) * PAGE <= small_cap
    restarts = [b for b in bodies if b["page_number"] == 1][1:]
    assert restarts, "137 records under a cap of 50 need restarts"
    assert all("minimum_modified_date" in b for b in restarts)
    assert [p.number for p in pages] == list(range(1, len(pages) + 1))
    assert pages[-1].received_so_far == 137


def test_cap_cursor_keeps_the_callers_upper_bound(small_cap: int, stubs: list[StubCopper]) -> None:
    leads = _leads_with_ties()
    end = leads[120]["date_modified"]
    stub = StubCopper({"leads": leads}, cap=small_cap)
    stubs.append(stub)
    with _stub_client(stub, page_size=PAGE) as client:
        ids = _ids(list(client.search("leads", start=T0 + 3, end=end)))
    expected = [r["id"] for r in leads if T0 + 3 <= r["date_modified"] <= end]
    assert sorted(ids) == expected
    bodies = stub.bodies("leads")
    assert all(b["maximum_modified_date"] <= end for b in bodies)  # tie groups: one second
    assert any(b["maximum_modified_date"] == end for b in bodies)


def test_an_undercounting_total_header_never_ends_a_walk_early(stubs: list[StubCopper]) -> None:
    leads = [{"id": i, "date_modified": T0 + i} for i in range(3 * PAGE)]
    stub = StubCopper({"leads": leads}, cap=CAP, total="under")
    stubs.append(stub)
    with _stub_client(stub, page_size=PAGE) as client:
        ids = _ids(list(client.search("leads", start=None, end=None)))
    assert sorted(ids) == [r["id"] for r in leads]
    assert len(stub.bodies("leads")) == 4  # three full pages and the short one that ends it


def test_an_account_refusing_the_converted_leads_flag_still_gets_its_leads(
    stubs: list[StubCopper],
) -> None:
    leads = [{"id": i, "date_modified": T0 + i} for i in range(25)]
    stub = StubCopper({"leads": leads}, cap=CAP, converted_flag=False)
    stubs.append(stub)
    with _stub_client(stub, page_size=PAGE) as client:
        ids = _ids(list(client.search("leads", start=None, end=None)))
        assert client.newest_modified("leads") == T0 + 24
    assert sorted(ids) == [r["id"] for r in leads]
    statuses = [r.status for r in stub.server.recorded()]
    assert statuses.count(422) == 1  # learnt once, then never sent again
    assert client.refused_flags == {"include_converted_leads"}


def test_cap_full_of_one_second_raises_instead_of_looping(
    small_cap: int, stubs: list[StubCopper]
) -> None:
    leads = [{"id": i, "date_modified": T0} for i in range(small_cap + 5)]
    stub = StubCopper({"leads": leads}, cap=small_cap)
    stubs.append(stub)
    with _stub_client(stub, page_size=PAGE) as client, pytest.raises(CopperCapError) as exc:
        list(client.search("leads", start=None, end=None))
    assert f"at least {small_cap} records share date_modified" in str(exc.value)
    # the page that finds the tie group, then the group paged by number up to the cap
    assert len(stub.bodies("leads")) == 1 + small_cap // PAGE


@pytest.mark.parametrize("total", ["count", "none", "blind"])
def test_activities_over_the_cap_are_split_into_windows(
    small_cap: int, stubs: list[StubCopper], total: str
) -> None:
    rng = random.Random(3)
    activities = [
        {"id": 6_000_000_000 + i, "activity_date": T0 + rng.randrange(0, 5_000)} for i in range(230)
    ]
    stub = StubCopper({"activities": activities}, cap=small_cap, total=total)
    stubs.append(stub)
    with _stub_client(stub, page_size=PAGE) as client:
        pages = list(client.search("activities", start=None, end=None, activity_type_ids=[0, 7]))
    ids = _ids(pages)
    assert sorted(ids) == sorted(a["id"] for a in activities)
    bodies = stub.bodies("activities")
    assert all(b["activity_types"][1] == {"id": 7, "category": "user"} for b in bodies)
    assert max(b["page_number"] for b in bodies) * PAGE <= small_cap
    if total == "count":  # the header reveals an oversize window on its first page
        assert len(bodies) < 2 * len(activities) / PAGE


@pytest.mark.parametrize("by_date", [False, True], ids=["unordered", "by-date"])
def test_a_rounded_total_header_splits_as_well_as_an_exact_count(
    small_cap: int, stubs: list[StubCopper], by_date: bool
) -> None:
    """Most of a window's records in its later half: that half's rounded total (95 -> 100)
    equals the whole's (100). That is a coarse count, not a blind one (the earlier half said
    10): the walk goes on splitting instead of paging to the cap and reading the half again."""
    activities = [{"id": 8_000 + i, "activity_date": T0 + 400 * i} for i in range(5)] + [
        {"id": 9_000 + i, "activity_date": T0 + 2_600 + 25 * i} for i in range(95)
    ]
    requests = {}
    for total in ("count", "estimate"):
        stub = StubCopper(
            {"activities": activities}, cap=small_cap, total=total, activities_by_date=by_date
        )
        stubs.append(stub)
        with _stub_client(stub, page_size=PAGE) as client:
            pages = list(client.search("activities", start=T0, end=T0 + 4_999))
        assert sorted(_ids(pages)) == sorted(a["id"] for a in activities)
        requests[total] = len(stub.bodies("activities"))
    assert requests["estimate"] == requests["count"]


def test_a_header_that_ignores_the_window_start_is_paged_not_split_to_one_second(
    small_cap: int, stubs: list[StubCopper]
) -> None:
    """A header counting every record up to the window's end (blind to its start) matches the
    parent's in every later half; the halves add up to more than the parent, so it is not
    taken as a count, and a one-second window is never split on a header's word."""
    activities = [{"id": 5_000 + i, "activity_date": T0 + i} for i in range(40)]
    activities += [{"id": 6_000 + i, "activity_date": T0 + 19_961 + i} for i in range(40)]
    stub = StubCopper(
        {"activities": activities}, cap=small_cap, total="up_to_end", activities_by_date=True
    )
    stubs.append(stub)
    with _stub_client(stub, page_size=PAGE) as client:
        pages = list(client.search("activities", start=None, end=T0 + 20_000))
    assert sorted(_ids(pages)) == [a["id"] for a in activities]


def test_a_full_fetch_by_date_splits_once_from_the_oldest_date_seen(
    small_cap: int, stubs: list[StubCopper]
) -> None:
    """A full fetch (open below) of one and a half caps, returned by date: the probe's first
    page holds the oldest records, the window is split halfway from the oldest to its end, and
    each half is walked once. 75 records a minute apart, cap 50, pages of 10: the probe, then
    38 and 37 records in four searches each (the old split at the page's median cost a
    one-page window and a second probe)."""
    activities = [{"id": 7_000 + i, "activity_date": T0 + 60 * i} for i in range(75)]
    stub = StubCopper(
        {"activities": activities}, cap=small_cap, total="estimate", activities_by_date=True
    )
    stubs.append(stub)
    with _stub_client(stub, page_size=PAGE) as client:
        pages = list(client.search("activities", start=None, end=T0 + 60 * 75))
    assert sorted(_ids(pages)) == [a["id"] for a in activities]
    assert len(stub.bodies("activities")) == 1 + search_requests(38, PAGE) + search_requests(
        37, PAGE
    )


def test_an_empty_first_page_ends_the_window_whatever_its_header_says(
    small_cap: int, stubs: list[StubCopper]
) -> None:
    """A full fetch up to a moment before every activity, under a header blind to the date
    filter (60, over the cap of 50): the first page is empty, so the window holds nothing. It
    was taken as over the cap, and an open window without a date to split at raised."""
    activities = [{"id": 1_000 + i, "activity_date": T0 + 60 * i} for i in range(60)]
    stub = StubCopper({"activities": activities}, cap=small_cap, total="blind")
    stubs.append(stub)
    with _stub_client(stub, page_size=PAGE) as client:
        pages = list(client.search("activities", start=None, end=T0 - 1))
    assert _ids(pages) == []
    assert len(stub.bodies("activities")) == 1


@pytest.mark.parametrize("total", ["count", "estimate"])
def test_a_window_split_from_another_is_split_by_its_total(
    small_cap: int, stubs: list[StubCopper], total: str
) -> None:
    """Eight caps of activities, ten seconds apart. The whole window's header has shown
    nothing yet: it is halved. Each half's total (200, under the whole's 400) has shown that
    the header follows the window, so each half is split in as many windows as 200 records
    need at ``SPLIT_FILL`` of the cap (five of 40), not halved again and again: three probes
    and 53 requests in all (halving took 95: seven probes, and windows of exactly the cap read
    to the cap and then again in halves)."""
    activities = [{"id": 3_000 + i, "activity_date": T0 + 10 * i} for i in range(400)]
    stub = StubCopper({"activities": activities}, cap=small_cap, total=total)
    stubs.append(stub)
    with _stub_client(stub, page_size=PAGE) as client:
        pages = list(client.search("activities", start=T0, end=T0 + 3_999))
    assert sorted(_ids(pages)) == [a["id"] for a in activities]
    assert math.ceil(200 / (copper_client.SPLIT_FILL * small_cap)) == 5
    assert len(stub.bodies("activities")) == 3 + 10 * search_requests(40, PAGE)


@pytest.mark.parametrize("total", ["count", "estimate", "under", "up_to_end", "blind", "none"])
@pytest.mark.parametrize("seed", range(4))
def test_split_windows_read_every_activity_once_whatever_the_header(
    small_cap: int, stubs: list[StubCopper], total: str, seed: int
) -> None:
    """Activities bunched unevenly in time (a split sized by a total then finds some parts
    over the cap and splits them again), under every header: one that counts, rounds up,
    undercounts, ignores the window's start, ignores the dates, or is absent. Whatever the
    header, every activity comes once and no search pages past the cap."""
    rng = random.Random(seed)
    activities: list[dict[str, Any]] = []
    for _ in range(rng.randint(2, 5)):  # bunches of up to three caps, a few hours wide
        centre, width = T0 + rng.randrange(0, 50_000), rng.randint(500, 8_000)
        for _ in range(rng.randint(10, 3 * small_cap)):
            date = centre + rng.randrange(0, width)
            activities.append({"id": 10_000 + len(activities), "activity_date": date})
    start = None if seed % 2 else T0
    stub = StubCopper(
        {"activities": activities}, cap=small_cap, total=total, activities_by_date=bool(seed % 3)
    )
    stubs.append(stub)
    with _stub_client(stub, page_size=PAGE) as client:
        pages = list(client.search("activities", start=start, end=T0 + 60_000))
    ids = _ids(pages)
    assert sorted(ids) == [a["id"] for a in activities]
    assert max(b["page_number"] for b in stub.bodies("activities")) * PAGE <= small_cap


def test_a_short_first_page_is_the_whole_window_whatever_its_header_says(
    small_cap: int, stubs: list[StubCopper]
) -> None:
    """Seven activities in the window under a header blind to the date filter (60, over the
    cap of 50): the first page is short, so it holds the whole window. Before, that page was
    taken as over the cap, thrown away and the window split."""
    activities = [{"id": 2_000 + i, "activity_date": T0 + 60 * i} for i in range(60)]
    stub = StubCopper({"activities": activities}, cap=small_cap, total="blind")
    stubs.append(stub)
    with _stub_client(stub, page_size=PAGE) as client:
        pages = list(client.search("activities", start=T0, end=T0 + 60 * 6))
    assert sorted(_ids(pages)) == [a["id"] for a in activities[:7]]
    assert len(stub.bodies("activities")) == 1


@pytest.mark.parametrize("extra", [1, 0], ids=["over-the-cap", "exactly-the-cap"])
def test_activities_in_one_crowded_second_raise(
    small_cap: int, stubs: list[StubCopper], extra: int
) -> None:
    """A second holding exactly the cap ends on a full last page: no search can tell whether
    more follow, so it raises as over the cap does, saying only what it knows."""
    activities = [{"id": i, "activity_date": T0} for i in range(small_cap + extra)]
    stub = StubCopper({"activities": activities}, cap=small_cap)
    stubs.append(stub)
    with _stub_client(stub, page_size=PAGE) as client, pytest.raises(CopperCapError) as exc:
        list(client.search("activities", start=None, end=None))
    assert f"at least {small_cap} records dated {T0}" in str(exc.value)


# -- throttle --------------------------------------------------------------------------------
def test_throttle_stays_under_the_servers_rate_limit(stubs: list[StubCopper]) -> None:
    time = FakeTime()
    leads = [{"id": i, "date_modified": T0 + i} for i in range(5)]
    stub = StubCopper({"leads": leads}, cap=100, rate_limit_per_minute=10, clock=time.clock)
    stubs.append(stub)
    with _stub_client(stub, time, requests_per_minute=10) as client:
        for _ in range(35):
            assert client.newest_modified("leads") == T0 + 4
    statuses = [r.status for r in stub.server.recorded()]
    assert statuses == [200] * 35
    assert time.now - 1_000.0 >= 180  # 35 requests at 10 a minute: three full windows waited
    assert client.stats.retries == 0


def test_without_throttle_the_server_limit_is_hit_and_retried(stubs: list[StubCopper]) -> None:
    time = FakeTime()
    leads = [{"id": 1, "date_modified": T0}]
    stub = StubCopper({"leads": leads}, cap=100, rate_limit_per_minute=3, clock=time.clock)
    stubs.append(stub)
    policy = RetryPolicy(attempts=10, backoff_factor=30)
    with _stub_client(stub, time, policy=policy) as client:
        for _ in range(5):
            client.newest_modified("leads")
    assert 429 in [r.status for r in stub.server.recorded()]
    assert client.stats.retries > 0
    assert time.sleeps  # backoff went through the injected sleeper


# -- pure parts of the client ----------------------------------------------------------------
def test_page_size_is_bounded_by_copper() -> None:
    with pytest.raises(ValueError, match=r"1\.\.200"):
        CopperClient("http://127.0.0.1:9", KEY, EMAIL, page_size=201)


def test_unknown_object_fails_before_any_request() -> None:
    client = CopperClient("http://127.0.0.1:9", KEY, EMAIL)
    with pytest.raises(ValueError, match="unknown Copper object"):
        client.search("tasks", start=None, end=None)
    assert client.stats.requests == 0


def test_empty_window_or_type_list_sends_nothing() -> None:
    client = CopperClient("http://127.0.0.1:9", KEY, EMAIL)
    assert list(client.search("leads", start=10, end=9)) == []
    assert list(client.search("activities", start=None, end=None, activity_type_ids=[])) == []
    with pytest.raises(ValueError, match="filter activities"):
        client.search("leads", start=None, end=None, activity_type_ids=[0])
    assert client.stats.requests == 0


@pytest.mark.parametrize(
    ("n", "expected"), [(0, 1), (1, 1), (199, 1), (200, 2), (201, 2), (400, 3), (401, 3)]
)
def test_search_requests(n: int, expected: int) -> None:
    assert search_requests(n) == expected
    assert METADATA_CALLS == 8


# -- against the Copper sandbox ----------------------------------------------------------------
SANDBOX_KEY, SANDBOX_EMAIL = "sandbox-copper-key", "sandbox@example.com"


@pytest.fixture
def sandbox(copper_sandbox_factory: Callable[..., CopperSandbox]) -> CopperSandbox:
    """Our own seeded sandbox (100 leads: a restart under a cap of 60); tests replace its data
    sets and inject faults freely."""
    return copper_sandbox_factory(seed=0, scale=0.1, now=T0 + 400 * 86_400)


@pytest.fixture
def time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def client(sandbox: CopperSandbox, time: FakeTime) -> Iterator[CopperClient]:
    with CopperClient(
        sandbox.base_url,
        SANDBOX_KEY,
        SANDBOX_EMAIL,
        requests_per_minute=None,
        sleeper=time.sleep,
        clock=time.clock,
    ) as made:
        yield made


def _searches(sandbox: CopperSandbox, name: str = "leads") -> list[Any]:
    return sandbox.server.recorded("POST", f"/{name}/search")


def _leads(n: int) -> list[dict[str, Any]]:
    return [{"id": 10 + i, "name": f"Lead {i}", "date_modified": T0 + i // 3} for i in range(n)]


@pytest.mark.parametrize(
    ("n", "requests"), [(0, 1), (1, 1), (199, 1), (200, 2), (201, 2), (401, 3)]
)
def test_paging_request_counts(
    sandbox: CopperSandbox, client: CopperClient, n: int, requests: int
) -> None:
    sandbox.set_records("leads", _leads(n))
    pages = list(client.search("leads", start=None, end=None))
    assert sorted(_ids(pages)) == [10 + i for i in range(n)]
    sent = _searches(sandbox)
    assert len(sent) == requests == search_requests(n)
    base = {
        "page_size": 200,
        "page_number": 1,  # a value cursor, never an offset
        "sort_by": "date_modified",
        "sort_direction": "asc",
        "include_converted_leads": True,
    }
    assert sent[0].body == base
    for before, request in zip(pages, sent[1:], strict=False):
        last = before.records[-1]["date_modified"]  # restarts at the last date seen
        assert request.body == {**base, "minimum_modified_date": last}
    assert pages[-1].total is not None and pages[-1].total >= n  # an estimate, from above
    assert pages[-1].received_so_far == n


def test_every_request_carries_the_documented_headers(
    sandbox: CopperSandbox, client: CopperClient
) -> None:
    client.newest_modified("leads")
    (sent,) = _searches(sandbox)
    assert sent.headers["x-pw-accesstoken"] == SANDBOX_KEY
    assert sent.headers["x-pw-application"] == "developer_api"
    assert sent.headers["x-pw-useremail"] == SANDBOX_EMAIL
    assert sent.headers["content-type"] == "application/json"


def test_date_window_bounds_are_inclusive(sandbox: CopperSandbox, client: CopperClient) -> None:
    start, end = T0 + 100, T0 + 200
    dates = [start - 1, start, start + 1, end - 1, end, end + 1]
    sandbox.set_records("leads", [{"id": d, "date_modified": d} for d in dates])
    ids = _ids(list(client.search("leads", start=start, end=end)))
    assert ids == [start, start + 1, end - 1, end]
    (sent,) = _searches(sandbox)
    assert (sent.body["minimum_modified_date"], sent.body["maximum_modified_date"]) == (start, end)
    assert _ids(list(client.search("leads", start=None, end=start))) == [start - 1, start]
    assert _ids(list(client.search("leads", start=end, end=None))) == [end, end + 1]


def test_activities_window_and_type_filter(sandbox: CopperSandbox, client: CopperClient) -> None:
    note = sandbox.metadata.activity_type("Note")["id"]
    everything = sandbox.records("activities")
    start = sorted(a["activity_date"] for a in everything)[len(everything) // 2]
    pages = list(client.search("activities", start=start, end=None, activity_type_ids=[note]))
    expected = {
        a["id"]
        for a in everything
        if a["activity_date"] >= start and a["type"] == {"id": note, "category": "user"}
    }
    assert set(_ids(pages)) == expected and len(_ids(pages)) == len(expected)
    (sent,) = _searches(sandbox, "activities")
    assert set(sent.body) == {"page_size", "page_number", "minimum_activity_date", "activity_types"}


def test_on_page_sees_every_page(sandbox: CopperSandbox, client: CopperClient) -> None:
    sandbox.set_records("leads", _leads(450))
    seen: list[Page] = []
    pages = list(client.search("leads", start=None, end=None, on_page=seen.append))
    assert seen == pages and sum(len(p.records) for p in pages) == 450
    assert [p.received_so_far for p in pages][-1] == 450


def test_seeded_data_under_a_lowered_cap(
    sandbox: CopperSandbox, client: CopperClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The seeded leads (a mass-update tie group larger than a page) walked with a cap of 60."""
    monkeypatch.setattr(sandbox, "search_cap", 60)
    monkeypatch.setattr(copper_client, "SEARCH_RESULT_CAP", 60)
    client.page_size = 20
    everything = sandbox.records("leads")
    pages = list(client.search("leads", start=None, end=None))
    assert sorted(_ids(pages)) == [r["id"] for r in everything]
    assert max(r.body["page_number"] * 20 for r in _searches(sandbox)) <= 60


def test_newest_modified_is_one_small_request(sandbox: CopperSandbox, client: CopperClient) -> None:
    newest = max(r["date_modified"] for r in sandbox.records("people"))
    assert client.newest_modified("people") == newest
    (sent,) = _searches(sandbox, "people")
    assert sent.body == {
        "page_size": 1,
        "page_number": 1,
        "sort_by": "date_modified",
        "sort_direction": "desc",
    }
    sandbox.set_records("people", [])
    assert client.newest_modified("people") is None
    with pytest.raises(ValueError, match="activity_exists_since"):
        client.newest_modified("activities")


def test_activity_exists_since(sandbox: CopperSandbox, client: CopperClient) -> None:
    newest = max(a["activity_date"] for a in sandbox.records("activities"))
    assert client.activity_exists_since(newest)
    assert not client.activity_exists_since(newest + 1)
    assert client.activity_exists_since(newest - 5, until=newest)
    assert all(r.body["page_size"] == 1 for r in _searches(sandbox, "activities"))


def test_metadata_reads_every_user_page(sandbox: CopperSandbox, client: CopperClient) -> None:
    users = [{"id": 900 + i, "name": f"U{i}", "email": f"u{i}@example.com"} for i in range(401)]
    sandbox.set_records("users", users)
    metadata = client.metadata()
    assert len(metadata.users) == 401
    assert metadata.user_emails[1300] == "u400@example.com"
    assert metadata.activity_type_names[("user", 0)] == "Note"
    assert {t.category for t in metadata.activity_types.system} == {"system"}
    assert metadata.pipelines and metadata.pipelines[0].stages
    assert len(metadata.custom_field_definitions) == len(sandbox.metadata.custom_field_definitions)
    assert client.stats.requests == METADATA_CALLS - 1 + 3
    assert len(sandbox.server.recorded("POST", "/users/search")) == 3


# -- failures and retries --------------------------------------------------------------------
def test_429_with_retry_after_waits_that_long(
    sandbox: CopperSandbox, client: CopperClient, time: FakeTime
) -> None:
    sandbox.server.faults.add(status=429, retry_after=1)
    assert client.newest_modified("leads") is not None
    assert time.sleeps == [1.0]
    assert [r.status for r in _searches(sandbox)] == [429, 200]
    assert client.stats.retries == 1


def test_429_without_retry_after_backs_off_exponentially(
    sandbox: CopperSandbox, client: CopperClient, time: FakeTime
) -> None:
    sandbox.server.faults.add(status=429, times=4)
    assert client.newest_modified("leads") is not None
    assert time.sleeps == [0.5, 1.0, 2.0, 4.0]  # backoff_factor 0.5 s, doubling per retry
    assert [r.status for r in _searches(sandbox)] == [429] * 4 + [200]


def test_5xx_then_success(sandbox: CopperSandbox, client: CopperClient) -> None:
    sandbox.set_records("leads", _leads(3))
    sandbox.server.faults.add(status=503, path="/leads/search")
    sandbox.server.faults.add(status=500, path="/leads/search")
    assert len(_ids(list(client.search("leads", start=None, end=None)))) == 3
    assert [r.status for r in _searches(sandbox)] == [503, 500, 200]


def test_5xx_gives_up_after_the_policy_attempts(sandbox: CopperSandbox, time: FakeTime) -> None:
    sandbox.server.faults.add(status=502, times=10)
    policy = RetryPolicy(attempts=3)
    with (
        CopperClient(
            sandbox.base_url, SANDBOX_KEY, SANDBOX_EMAIL, policy=policy, sleeper=time.sleep
        ) as client,
        pytest.raises(ApiError, match="gave up after 3 attempts") as exc,
    ):
        client.newest_modified("leads")
    assert exc.value.status == 502
    assert len(_searches(sandbox)) == 3


@pytest.mark.parametrize(
    ("key", "email"), [("wrong-key-123", SANDBOX_EMAIL), (SANDBOX_KEY, "intruder@example.com")]
)
def test_401_fails_fast_without_leaking_credentials(
    sandbox: CopperSandbox, time: FakeTime, key: str, email: str
) -> None:
    with (
        CopperClient(sandbox.base_url, key, email, sleeper=time.sleep) as client,
        pytest.raises(ApiAuthError) as exc,
    ):
        list(client.search("leads", start=None, end=None))
    message = str(exc.value)
    assert "Unauthorized" in message
    assert key not in message and email not in message
    assert exc.value.status == 401
    assert len(_searches(sandbox)) == 1
    assert time.sleeps == []


def test_malformed_json_is_a_clear_error(sandbox: CopperSandbox, client: CopperClient) -> None:
    sandbox.server.faults.add(status=200, raw_body='[{"id": 1,', path="/leads/search")
    with pytest.raises(ApiResponseError, match="malformed JSON"):
        list(client.search("leads", start=None, end=None))


def test_a_non_array_search_answer_is_a_clear_error(
    sandbox: CopperSandbox, client: CopperClient
) -> None:
    sandbox.server.faults.add(status=200, raw_body='{"records": []}', path="/leads/search")
    with pytest.raises(ApiResponseError, match="not a JSON array"):
        list(client.search("leads", start=None, end=None))


# -- client + frame over the seeded edge cases -------------------------------------------------
@pytest.mark.parametrize("locale", ["M/D/YYYY", "D/M/YYYY"])
def test_seeded_objects_frame_without_problems(
    copper_sandbox_factory: Callable[..., CopperSandbox], locale: str
) -> None:
    sandbox = copper_sandbox_factory(seed=0, close_date_format=locale)
    edge = sandbox.edge_cases
    with CopperClient(
        sandbox.base_url, SANDBOX_KEY, SANDBOX_EMAIL, requests_per_minute=None
    ) as client:
        metadata = client.metadata()
        fetched = {
            name: [r for p in client.search(name, start=None, end=None) for r in p.records]
            for name in copper_client.COPPER_OBJECTS
        }
    names = {"company": {r["id"]: r["name"] for r in fetched["companies"]}}
    frames = {
        name: records_frame(
            name,
            records,
            metadata,
            fetched_at=dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
            partition_start=dt.date(2024, 1, 1),
            close_date_format=locale,  # type: ignore[arg-type]
            opportunity_type_field="custom:Opportunity Type",
            record_names=names,
        ).set_index("id")
        for name, records in fetched.items()
    }
    for name, frame in frames.items():
        assert len(frame) == sandbox.count(name)
        assert frame["problems"].isna().all(), frame["problems"].dropna().head()

    def fields(name: str, record_id: int) -> dict[str, Any]:
        return json.loads(frames[name].loc[record_id, "fields"])

    leads, people, opportunities = frames["leads"], frames["people"], frames["opportunities"]
    assert pd.isna(leads.loc[edge["lead_without_email_id"], "primary_email"])
    two = sandbox.record("people", edge["person_two_emails_id"])
    assert people.loc[edge["person_two_emails_id"], "primary_email"] == two["emails"][0]["email"]
    assert fields("people", edge["person_empty_multiselect_id"])["custom:Interests"] == []
    ownerless = fields("companies", edge["company_without_owner_field_id"])
    assert field_value(ownerless, "assignee_planhat_id") is MISSING
    owner = edge["company_invalid_owner"]
    assert (
        field_value(fields("companies", owner["company_id"]), "assignee_planhat_id")
        == (owner["owner_id"])
    )
    close = edge["opportunity_close_date"]["id"]
    assert fields("opportunities", close)["close_date"] == "2024-01-14"
    assert pd.isna(opportunities.loc[edge["opportunity_blank_type_id"], "opportunity_type"])
    assert pd.isna(opportunities.loc[edge["opportunity_without_type_field_id"], "opportunity_type"])
    typed = opportunities["opportunity_type"].dropna()
    assert set(typed) <= {"New Business", "Upsell", "Renewal"} and len(typed)
    partners = [fields("opportunities", i)["custom:Partner Company"] for i in opportunities.index]
    linked = [p for p in partners if p and p["ids"]]
    assert linked and all(len(p["names"]) == len(p["ids"]) for p in linked)
    activities = frames["activities"]
    acts = edge["activities"]
    note = activities.loc[acts["note_on_person"]]
    assert (note["type_name"], note["parent_type"]) == ("Note", "person")
    assert activities.loc[acts["system_email"], "type_category"] == "system"
    assert not activities["fields"].str.contains("&amp;|&#x27;|&quot;").any()


def _sharing(sandbox: CopperSandbox, cache: MetadataCache) -> CopperClient:
    """A sandbox client on ``cache``, unthrottled."""
    return CopperClient(
        sandbox.base_url,
        SANDBOX_KEY,
        SANDBOX_EMAIL,
        requests_per_minute=None,
        metadata_cache=cache,
    )


def test_clients_sharing_a_metadata_cache_read_the_lookups_once_per_ttl(
    sandbox: CopperSandbox, time: FakeTime
) -> None:
    cache = MetadataCache(ttl=300, clock=time.clock)

    def client() -> CopperClient:
        return _sharing(sandbox, cache)

    with client() as first:
        first.metadata()
        spent = first.stats.requests
    with client() as second:
        assert second.metadata() is not None and second.stats.requests == 0
    time.sleep(300)
    with client() as third:
        third.metadata()
        assert third.stats.requests == spent
    with CopperClient(sandbox.base_url, "other-key", SANDBOX_EMAIL) as other:
        assert cache.get(("x", SANDBOX_EMAIL)) is None and other._metadata_cache is None


def test_a_run_reads_the_metadata_once_however_long_it_lasts(
    sandbox: CopperSandbox, time: FakeTime
) -> None:
    """A full fetch longer than the cache's life maps every object with the lookups its first
    asset read; another run, or a client outside a run, reads them again once they are old."""
    cache = MetadataCache(ttl=300, clock=time.clock)

    def requests_for(run: str | None) -> int:
        with _sharing(sandbox, cache) as client:
            client.metadata(run=run)
            return client.stats.requests

    spent = requests_for("run-1")
    assert spent > 0
    time.sleep(900)  # a nine-minute fetch of the first object
    assert requests_for("run-1") == 0
    assert requests_for("run-2") == spent  # a later run: old lookups are read again
    assert requests_for("run-2") == 0
    time.sleep(300)
    assert requests_for(None) == spent  # outside a run: the entry's age decides
