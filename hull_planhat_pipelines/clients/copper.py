"""Copper developer API client: searches walked by date, and the account metadata.

Each searchable object is a declaration (``COPPER_OBJECTS``, from ``sync.copper.schema``); one
loop fetches them all, and ``search`` takes a name or a declaration (an object declared outside
the default registry). Paging follows Copper's documented rules: ``page_size`` (max 200) and
``page_number`` in the JSON body, only documented snake_case keys (an unknown key answers 422),
stop on a short page. Copper's ``X-PW-TOTAL`` header is an estimate: it drives progress reports
and never decides when a walk ends (a header that undercounts would otherwise lose records
silently).

Objects sorted by date are walked with a value cursor, never by page offset: records move to
the end of a ``date_modified`` sort whenever someone saves them, and an offset walk then skips
the records that slide onto pages already read. One search returns at most
``SEARCH_RESULT_CAP`` records; the cursor walk reads one page per search, and activities (no
documented sort) are split into date windows.
"""

from __future__ import annotations

import bisect
import logging
import math
import statistics
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from hull_planhat_pipelines.clients.http import (
    ApiError,
    ApiResponseError,
    ApiSession,
    Clock,
    RequestStats,
    RetryPolicy,
    Sleeper,
    SlidingWindowLimiter,
)
from hull_planhat_pipelines.sync.copper.schema import (
    COPPER_OBJECTS,
    CopperMetadata,
    CopperObject,
    copper_object,
    int_or_none,
)

__all__ = [
    "COPPER_OBJECTS",
    "DEFAULT_BASE_URL",
    "MAX_PAGE_SIZE",
    "METADATA_CALLS",
    "METADATA_LISTS",
    "SEARCH_RESULT_CAP",
    "CopperCapError",
    "CopperClient",
    "CopperMetadata",
    "CopperObject",
    "Page",
    "metadata_requests",
    "minimum_requests",
    "search_requests",
    "value_cursor_searches",
]

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.copper.com/developer_api/v1"
MAX_PAGE_SIZE = 200
SEARCH_RESULT_CAP = 100_000
"""Copper returns at most this many records per search, whatever the page number."""
TOTAL_SLACK = 1.1
"""How far the parts of a split window's ``X-PW-TOTAL`` may add up above its own and still be
counts: an estimate rounded up to two significant digits is at most 10% above the count."""
SPLIT_FILL = 0.9
"""Share of the cap a window split by its ``X-PW-TOTAL`` is sized for: room for the records
to lie unevenly in time (a part over the cap costs a probe and a split of its own; each part
beyond the fewest, its partial last page). The activity walk alone over 1.5 million
activities, above the minimum: 11 requests at 0.8, 9 at 0.9, 5 at 1.0, where spans sized at
the cap itself would put every part of a total just under a multiple of it over the cap."""
DEFAULT_POLICY = RetryPolicy()
"""429 and 5xx retried with backoff (Retry-After honoured); 401/403 fail at once."""


METADATA_LISTS: dict[str, str] = {
    "custom_field_definitions": "/custom_field_definitions",
    "activity_types": "/activity_types",
    "pipelines": "/pipelines",
    "lead_statuses": "/lead_statuses",
    "customer_sources": "/customer_sources",
    "contact_types": "/contact_types",
    "loss_reasons": "/loss_reasons",
}
"""CopperMetadata field -> GET path; each answers everything at once (never paged)."""
METADATA_CALLS = len(METADATA_LISTS) + 1
"""GETs plus the first ``/users/search`` page: the whole metadata when users fit one page."""


def search_requests(records: int, page_size: int = MAX_PAGE_SIZE) -> int:
    """Requests one search under the cap needs: the full pages plus the short (possibly empty)
    page that proves the end; only a short page can."""
    return records // page_size + 1


def cursor_walk_searches(sorted_dates: list[int], page_size: int, cap: int) -> int:
    """Search requests of the cheapest cap-respecting walk: full pages up to the cap, then a
    restart at the last date seen, which re-reads that second's records."""
    requests, first = 0, 0
    while True:
        remaining = len(sorted_dates) - first
        if remaining <= cap:
            return requests + search_requests(remaining, page_size)
        requests += cap // page_size
        last = sorted_dates[first + cap - 1]
        first = bisect.bisect_left(sorted_dates, last, lo=first)


def value_cursor_searches(keys: Sequence[tuple[int, int]], page_size: int = MAX_PAGE_SIZE) -> int:
    """Search requests of the skip-free value-cursor walk over records whose sorted
    ``(date_modified, date_created)`` are ``keys``: each search re-reads the records at the
    last date seen (Copper filters inclusively and breaks no ties by id), a tie group over a
    page is walked by ``date_created``, and one over a page in both dates by page number plus
    one verification pass. The offset walk's minimum is ``search_requests``; the difference
    is what never skipping a record costs."""
    return _value_walk(keys, 0, page_size)


def _value_walk(keys: Sequence[tuple[int, ...]], level: int, page_size: int) -> int:
    """Requests of a value-cursor walk by the ``level``-th date of ``keys``: a page sharing one
    date is walked by the next date, and when no date is left by page number (the walk that
    finds more than a page, then a verification pass)."""
    values = [k[level] for k in keys]
    requests, at = 0, 0
    while True:
        page = values[at : at + page_size]
        requests += 1
        if len(page) < page_size:
            return requests
        if page[0] != page[-1]:
            at = bisect.bisect_left(values, page[-1], lo=at)
            continue
        stop = bisect.bisect_right(values, page[-1], lo=at)
        if level + 1 < len(keys[at]):
            requests += _value_walk(keys[at:stop], level + 1, page_size)
        else:
            passes = 2 if stop - at > page_size else 1  # a walk that found more, then a check
            requests += passes * search_requests(stop - at, page_size)
        at = stop


def metadata_requests(users: int, page_size: int = MAX_PAGE_SIZE) -> int:
    return len(METADATA_LISTS) + search_requests(users, page_size)


def minimum_requests(records: int, users: int, page_size: int = MAX_PAGE_SIZE) -> int:
    """The fewest requests that fetch ``records`` (one search under the cap) and the metadata."""
    return search_requests(records, page_size) + metadata_requests(users, page_size)


class MetadataCache:
    """Account metadata shared by the clients of one process for ``ttl`` seconds.

    Each Copper asset needs the same lookups; without sharing, a five-object poll spends
    most of its requests (and of Copper's 180 a minute) re-reading them. Keyed by API base URL
    and user so two accounts never share an entry. An entry fetched for a run serves that run
    however long it lasts: its objects are mapped with one version of the custom fields, and a
    full fetch longer than ``ttl`` does not read them twice (the next run reads them afresh).
    One entry an account: a run in the same process that reads them afresh meanwhile replaces
    it, and the first run then uses that newer version (runs launched by the daemon each have
    a process of their own; the command line runs one at a time).
    """

    def __init__(self, ttl: float = 300.0, clock: Clock = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._entries: dict[tuple[str, str], tuple[float, CopperMetadata, str | None]] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str], run: str | None = None) -> CopperMetadata | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            fetched, metadata, fetched_for = entry
            if run is not None and fetched_for == run:
                return metadata
            if self._clock() - fetched >= self.ttl:
                return None
            return metadata

    def put(self, key: tuple[str, str], metadata: CopperMetadata, run: str | None = None) -> None:
        with self._lock:
            self._entries[key] = (self._clock(), metadata, run)

    def clear(self) -> None:
        """Forget every entry (a test's sandbox may reuse the address of an earlier one)."""
        with self._lock:
            self._entries.clear()


SHARED_METADATA = MetadataCache()
"""The process-wide cache the Dagster resource hands its clients."""


@dataclass(frozen=True)
class Page:
    """One search response: the records not seen before in this walk."""

    object_name: str
    number: int
    """1-based over the whole walk (restarted searches keep counting)."""
    records: list[dict[str, Any]]
    total: int | None
    """``X-PW-TOTAL`` of the response: an estimate, for progress only."""
    received_so_far: int
    """Records yielded by the walk so far, this page included."""


class CopperCapError(ApiError):
    """A window that cannot be narrowed under the cap: one second fills a whole search (its
    last page is full, so the search cannot prove that nothing follows)."""


@dataclass
class _Search:
    """The state of one search (one filter, pages 1..n) inside a walk."""

    low: int | None
    high: int | None
    parent_total: int | None = None
    """``X-PW-TOTAL`` of the window this one was split from (activities)."""
    total: int | None = None
    """``X-PW-TOTAL`` of this search's first page."""
    received: int = 0
    dates: list[int] | None = None
    """Activities: the dates seen, to choose where to split if the cap is reached."""
    earlier: tuple[_Search, ...] = ()
    """The windows of the split that made this one, walked before it (activities)."""

    @property
    def one_second(self) -> bool:
        """The window cannot be narrowed: it holds a single second."""
        return self.low is not None and self.high is not None and self.low >= self.high


class CopperClient:
    """Copper's developer API with its documented headers, throttle and retry policy."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        user_email: str,
        *,
        requests_per_minute: int | None = 180,
        policy: RetryPolicy = DEFAULT_POLICY,
        sleeper: Sleeper = time.sleep,
        clock: Clock = time.monotonic,
        page_size: int = MAX_PAGE_SIZE,
        metadata_cache: MetadataCache | None = None,
        limiter: SlidingWindowLimiter | None = None,
    ) -> None:
        """``limiter``: the account's throttle shared across clients (see ``RateLimiters``)."""
        self._metadata_cache = metadata_cache
        self._cache_key = (base_url.rstrip("/"), user_email)
        self.refused_flags: set[str] = set()
        """Search flags Copper answered 422 to (see ``_post_search``)."""
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be 1..{MAX_PAGE_SIZE}, got {page_size}")
        self.page_size = page_size
        self.session = ApiSession(
            "copper",
            base_url,
            headers={
                "X-PW-AccessToken": api_key,
                "X-PW-Application": "developer_api",
                "X-PW-UserEmail": user_email,
                "Content-Type": "application/json",
            },
            secrets=[api_key, user_email],
            policy=policy,
            requests_per_minute=requests_per_minute,
            limiter=limiter,
            sleeper=sleeper,
            clock=clock,
        )

    @property
    def stats(self) -> RequestStats:
        return self.session.stats

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> CopperClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- searching ---------------------------------------------------------------------------
    def search(
        self,
        object_name: str | CopperObject,
        *,
        start: int | None,
        end: int | None,
        activity_type_ids: Sequence[int] | None = None,
        on_page: Callable[[Page], None] | None = None,
    ) -> Iterator[Page]:
        """Every record whose date field lies in the inclusive window [start, end] (Unix
        seconds; None leaves that side open), page by page, each record once.

        Sorted objects come in ascending date order, walked with a value cursor (each search
        starts at the last date seen and the boundary records it re-reads are dropped by id), so
        records edited during the walk cannot push others past it; an edited record may come
        twice, its newer version last. Activities come as returned, deduplicated by id; a
        window too large for one search is split (``_parts``). A search ends on a short page only;
        ``X-PW-TOTAL`` is an estimate, reported for progress.

        ``activity_type_ids`` (activities only) are user activity types: None means every
        type, an empty list none (nothing is requested).
        """
        obj = copper_object(object_name)  # unknown names fail here, not at the first next()
        if activity_type_ids is not None and obj.sort_by is not None:
            raise ValueError(f"activity_type_ids filter activities, not {obj.name}")
        empty_types = activity_type_ids is not None and len(activity_type_ids) == 0
        if empty_types or (start is not None and end is not None and start > end):
            return iter(())
        return _Walk(self, obj, activity_type_ids, on_page).pages(start, end)

    def newest_modified(self, object_name: str | CopperObject) -> int | None:
        """The newest ``date_modified`` of an object (None if it has no records): one request of
        one record, cheap enough for a sensor tick."""
        obj = copper_object(object_name)
        if obj.sort_by is None:
            raise ValueError(f"{obj.name} cannot be sorted; use activity_exists_since")
        body = {
            "page_size": 1,
            "page_number": 1,
            "sort_by": obj.sort_by,
            "sort_direction": "desc",
            **dict(obj.search_flags),
        }
        records, _ = self._post_search(obj, body)
        return int_or_none(records[0].get(obj.date_field)) if records else None

    def names(self, record_type: str, ids: Sequence[int]) -> dict[int, str]:
        """Names of records of one type (``company``, ``person``, ...) by id: searches with the
        documented ``ids`` filter, 200 ids a request. Ids Copper no longer has are left out."""
        obj = next((o for o in COPPER_OBJECTS.values() if o.record_type == record_type), None)
        if obj is None or obj.sort_by is None:
            return {}
        wanted = sorted(set(ids))
        found: dict[int, str] = {}
        for at in range(0, len(wanted), MAX_PAGE_SIZE):
            chunk = wanted[at : at + MAX_PAGE_SIZE]
            body = {"page_size": MAX_PAGE_SIZE, "page_number": 1, "ids": chunk}
            records, _ = self._post_search(obj, {**body, **dict(obj.search_flags)})
            for record in records:
                key, name = int_or_none(record.get("id")), record.get("name")
                if key is not None and isinstance(name, str):
                    found[key] = name
        return found

    def activity_exists_since(
        self,
        since: int,
        *,
        until: int | None = None,
        activity_type_ids: Sequence[int] | None = None,
    ) -> bool:
        """Whether any activity is dated in [since, until]: one request of one record
        (activities have no sort, so "newest" cannot be asked)."""
        obj = COPPER_OBJECTS["activities"]
        body: dict[str, Any] = {"page_size": 1, "page_number": 1, obj.min_key: since}
        if until is not None:
            body[obj.max_key] = until
        if activity_type_ids is not None:
            body["activity_types"] = _activity_types(activity_type_ids)
        records, _ = self._post_search(obj, body)
        return bool(records)

    def _post_search(
        self, obj: CopperObject, body: dict[str, Any]
    ) -> tuple[list[dict[str, Any]], int | None]:
        """One search. A flag of ``search_flags`` that the account refuses as unknown (422
        naming it: ``include_converted_leads`` is documented by integrations, not by Copper's
        own pages) is dropped for the rest of this client's life, with a warning, rather than
        failing every fetch of the object."""
        body = {k: v for k, v in body.items() if k not in self.refused_flags}
        try:
            return self._search_page(obj.path, body, kind=f"search/{obj.name}")
        except ApiError as exc:
            refused = [
                key
                for key, _ in obj.search_flags
                if key in body and exc.status == 422 and key in str(exc)
            ]
            if not refused:
                raise
            log.warning("copper/%s: Copper refuses %s; searching without it", obj.name, refused)
            self.refused_flags.update(refused)
            return self._post_search(obj, body)

    def _search_page(
        self, path: str, body: dict[str, Any], *, kind: str
    ) -> tuple[list[dict[str, Any]], int | None]:
        response = self.session.request("POST", path, json_body=body, kind=kind)
        records = self.session.decode(response, "POST", path)
        if records is None:
            records = []
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise ApiResponseError(
                "copper",
                f"POST {path} answered {type(records).__name__}, not a JSON array of records",
                response.status_code,
            )
        return records, int_or_none(response.headers.get("X-PW-TOTAL"))

    # -- metadata ----------------------------------------------------------------------------
    def metadata(self, run: str | None = None) -> CopperMetadata:
        """Every lookup that ids in records point to, users paged through to the end (from the
        shared cache when one was given and is fresh, or was fetched for the same ``run``)."""
        cache = self._metadata_cache
        cached = cache.get(self._cache_key, run) if cache is not None else None
        if cached is not None:
            return cached
        fresh = self._fetch_metadata()
        if cache is not None:
            cache.put(self._cache_key, fresh, run)
        return fresh

    def _fetch_metadata(self) -> CopperMetadata:
        data: dict[str, Any] = {}
        for field_name, path in METADATA_LISTS.items():
            body = self.session.json("GET", path, kind=f"metadata{path}")
            data[field_name] = _metadata_body(field_name, path, body)
        data["users"] = self.users()
        return CopperMetadata.model_validate(data)

    def users(self) -> list[dict[str, Any]]:
        """All Copper users (``/users/search`` pages until a short one)."""
        users: list[dict[str, Any]] = []
        number = 1
        while True:
            body = {"page_size": self.page_size, "page_number": number}
            records, _ = self._search_page("/users/search", body, kind="metadata/users")
            users.extend(records)
            if len(records) < self.page_size:
                return users
            number += 1


class _Walk:
    """One ``search`` call.

    Sorted objects are walked with a value cursor: every search asks for the first page of
    ``minimum_modified_date = <last date seen>``, so an edit during the walk (which moves a
    record to a later date) can shift nothing past the cursor. A page whose records all share
    one date is a tie group larger than a page: it is walked by ``date_created`` inside that
    second (again by value), and only a group sharing both dates falls back to page numbers,
    followed by verification passes until a pass finds nothing new. Records at the cursor's date
    come back on the next search and are dropped by id. Each search reads one page, so no search
    goes near Copper's 100,000-result cap.

    Activities have no sort: a stack of windows, each paged by number, split when the cap
    would cut it short; each id once.
    """

    verify_passes = 5
    """Most re-walks of a page-numbered tie group (each one stops as soon as it sees nothing new)."""

    def __init__(
        self,
        client: CopperClient,
        obj: CopperObject,
        activity_type_ids: Sequence[int] | None,
        on_page: Callable[[Page], None] | None,
    ) -> None:
        self.client = client
        self.obj = obj
        self.activity_type_ids = activity_type_ids
        self.on_page = on_page
        self.number = 0
        self.yielded = 0
        self.seen: set[int] = set()
        """Sorted objects: ids at the current last date (the boundary); activities: every id."""
        self.seen_date: int | None = None
        self.trust_total = True
        """Activities: split on ``X-PW-TOTAL`` until it proves blind to the date filter."""

    @property
    def sorted(self) -> bool:
        return self.obj.sort_by is not None

    def pages(self, start: int | None, end: int | None) -> Iterator[Page]:
        if self.sorted:
            return self._cursor_walk(start, end)
        return self._window_walk(start, end)

    # -- sorted objects: a value cursor ----------------------------------------------------------
    def _cursor_walk(self, start: int | None, end: int | None) -> Iterator[Page]:
        size = self.client.page_size
        low = start
        while True:
            records, total = self._post(self._sorted_body(low, end))
            yield self._page(records, total)
            if len(records) < size:
                return
            first, last = _date(records[0], self.obj), _date(records[-1], self.obj)
            if last is None:
                raise ApiResponseError(
                    "copper", f"{self.obj.name}: a record without {self.obj.date_field}", 200
                )
            if first != last:
                low = last  # re-reads the records at ``last``: they may not all have come
                continue
            yield from self._tie_group(last, records)
            if end is not None and last + 1 > end:
                return
            low = last + 1

    def _tie_group(self, moment: int, first_page: list[dict[str, Any]]) -> Iterator[Page]:
        """Every record whose date is ``moment``: more than one page of them."""
        if any(_created(r) is None for r in first_page):
            yield from self._numbered_group(moment, None)
            return
        size = self.client.page_size
        low: int | None = None
        while True:
            body = self._sorted_body(moment, moment, sort_by="date_created")
            if low is not None:
                body["minimum_created_date"] = low
            records, total = self._post(body)
            yield self._page(records, total)
            if len(records) < size:
                return
            first, last = _created(records[0]), _created(records[-1])
            if first is None or last is None:
                yield from self._numbered_group(moment, None)
                return
            if first != last:
                low = last
                continue
            yield from self._numbered_group(moment, last)
            low = last + 1

    def _numbered_group(self, moment: int, created: int | None) -> Iterator[Page]:
        """Records sharing ``moment`` (and ``created``), walked by page number: the only way
        left. A record edited away during a pass shifts later ones onto pages already read, so
        passes repeat until one brings nothing new (at most ``verify_passes`` re-walks)."""
        body = self._sorted_body(moment, moment)
        if created is not None:
            body |= {"minimum_created_date": created, "maximum_created_date": created}
        size = self.client.page_size
        for _ in range(1 + self.verify_passes):
            before = self.yielded
            number = 1
            while True:
                if number * size > SEARCH_RESULT_CAP:
                    raise CopperCapError(
                        "copper",
                        f"{self.obj.name}: at least {SEARCH_RESULT_CAP} records share "
                        f"{self.obj.date_field}={moment}; one search returns no more and "
                        "cannot tell whether more follow",
                    )
                records, total = self._post({**body, "page_number": number})
                yield self._page(records, total)
                if len(records) < size:
                    break
                number += 1
            if self.yielded == before:
                return

    def _sorted_body(
        self, low: int | None, high: int | None, *, sort_by: str | None = None
    ) -> dict[str, Any]:
        obj = self.obj
        body: dict[str, Any] = {
            "page_size": self.client.page_size,
            "page_number": 1,
            "sort_by": sort_by or obj.sort_by,
            "sort_direction": "asc",
            **dict(obj.search_flags),
        }
        if low is not None:
            body[obj.min_key] = low
        if high is not None:
            body[obj.max_key] = high
        return body

    def _post(self, body: dict[str, Any]) -> tuple[list[dict[str, Any]], int | None]:
        return self.client._post_search(self.obj, body)

    # -- activities: windows paged by number -----------------------------------------------------
    def _window_walk(self, start: int | None, end: int | None) -> Iterator[Page]:
        windows = [_Search(start, end)]
        while windows:
            search = windows.pop()
            search.dates = []
            capped = yield from self._search(search)
            if capped:
                windows.extend(reversed(_split(search, self.obj.name, self._parts(search))))

    def _search(self, search: _Search) -> Generator[Page, None, bool]:
        """Pages of one search; True when the cap cut it short."""
        cap = SEARCH_RESULT_CAP
        size = self.client.page_size
        number = 1
        while True:
            records, total = self.client._post_search(self.obj, self._body(search, number))
            if number == 1:
                search.total = total
            # a short first page is the whole window (an empty one: an empty window), whatever
            # its header says: only a full one may hide more
            if number == 1 and len(records) == size and self._too_big(search, total):
                search.dates = [d for r in records if (d := _date(r, self.obj)) is not None]
                return True  # one request to learn it, instead of paging up to the cap first
            search.received += len(records)
            for record in records:
                if (date := _date(record, self.obj)) is not None and search.dates is not None:
                    search.dates.append(date)
            yield self._page(records, total)
            if len(records) < size:
                return False
            if (number + 1) * size > cap:
                return True
            number += 1

    def _too_big(self, search: _Search, total: int | None) -> bool:
        """An activity window whose first page says it holds more than one search returns.

        A header equal to the parent's may be blind to the date filter, or an estimate too
        coarse to show the few records split off (Copper's is an upper bound, not a count).
        It is taken as a count only when it and the parts walked before it add up to about the
        parent's (within ``TOTAL_SLACK``): a blind header, or one that ignores the window's
        start, makes the parts add up to far more. A one-second window is never split on the
        header's word: its pages say whether it really holds more than the cap."""
        if total is None or total <= SEARCH_RESULT_CAP or not self.trust_total:
            return False
        if search.one_second:
            return False
        if total == search.parent_total:
            totals = [s.total for s in search.earlier]
            if (
                not totals
                or None in totals
                or sum(t for t in totals if t is not None) + total
                > search.parent_total * TOTAL_SLACK
            ):
                self.trust_total = False  # narrowing the window did not change it: not a count
                return False
        return True

    def _parts(self, search: _Search) -> int:
        """How many windows to split ``search`` into. Halves, until the header has shown that
        it follows the window; then as many as its total needs at ``SPLIT_FILL`` of the cap,
        each found over the cap on its first page instead of by halving again (each halving
        costs a probe: a full fetch of 1.5 million activities took 15 of them). The root has
        shown nothing yet: a header blind to the date filter would size its split by records
        outside it, and halving keeps that at one probe and one short page where a split in
        twenty would pay twenty pages. A window split from another has: ``_too_big`` took its
        total as a count (under its parent's, or adding up with the windows before it)."""
        total, parent = search.total, search.parent_total
        if not self.trust_total or total is None or parent is None:
            return 2
        return max(2, math.ceil(total / (SEARCH_RESULT_CAP * SPLIT_FILL)))

    # -- both ------------------------------------------------------------------------------------
    def _page(self, records: list[dict[str, Any]], total: int | None) -> Page:
        before = self.yielded
        fresh = self._fresh(records)
        self.number += 1
        self.yielded += len(fresh)
        repeated = len(records) - len(fresh)
        estimate = None if total is None else before + max(0, total - repeated)
        page = Page(self.obj.name, self.number, fresh, estimate, self.yielded)
        if self.on_page is not None:
            self.on_page(page)
        return page

    def _fresh(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Drop records already yielded: sorted objects keep the ids of the boundary date only
        (a record edited during the walk comes again with a later date: its newer version)."""
        fresh = []
        for record in records:
            if self.sorted:
                date = _date(record, self.obj)
                if date != self.seen_date:
                    self.seen_date, self.seen = date, set()
            key = record.get("id")
            if key in self.seen:
                continue
            self.seen.add(key)
            fresh.append(record)
        return fresh

    def _body(self, search: _Search, number: int) -> dict[str, Any]:
        obj = self.obj
        body: dict[str, Any] = {"page_size": self.client.page_size, "page_number": number}
        if search.low is not None:
            body[obj.min_key] = search.low
        if search.high is not None:
            body[obj.max_key] = search.high
        if self.activity_type_ids is not None:
            body["activity_types"] = _activity_types(self.activity_type_ids)
        return body


def _split(search: _Search, object_name: str, parts: int = 2) -> list[_Search]:
    """``parts`` windows covering ``search``'s, cutting its time range into equal spans (any
    split point is correct). The median date of the first page would balance halves only if
    Copper returned a random sample; it returns activities roughly in date order, so that
    median sits near one end and every split would cost an extra probe. A window open below (a
    full fetch) has no start: the oldest date of its first page stands for it (by date, the
    window's oldest records; in any order, a page's oldest is near them), and the spans run
    from there. Open at both ends, the median of the dates seen is the only guide (halves)."""
    low, high = search.low, search.high
    if search.one_second:
        raise CopperCapError(
            "copper",
            f"{object_name}: at least {SEARCH_RESULT_CAP} records dated {low}; "
            "one search returns no more and cannot tell whether more follow",
        )
    dates = search.dates or []
    if high is not None and (low is not None or dates):
        start = low if low is not None else min(min(dates), high - 1)
        count = max(2, min(parts, high - start))
        points = sorted({start + (high - start) * i // count for i in range(1, count)})
    elif dates:
        point = int(statistics.median_low(dates))
        points = [point if low is None else max(point, low)]
    else:
        raise CopperCapError("copper", f"{object_name}: cannot split an open window without dates")
    if high is not None:
        points = [p for p in points if p < high] or [high - 1]
    windows: list[_Search] = []
    for first, last in zip([low, *(p + 1 for p in points)], [*points, high], strict=True):
        windows.append(_Search(first, last, search.total, earlier=tuple(windows)))
    return windows


def _activity_types(ids: Sequence[int]) -> list[dict[str, Any]]:
    return [{"id": int(i), "category": "user"} for i in ids]


def _date(record: dict[str, Any], obj: CopperObject) -> int | None:
    return int_or_none(record.get(obj.date_field))


def _created(record: dict[str, Any]) -> int | None:
    return int_or_none(record.get("date_created"))


def _metadata_body(field_name: str, path: str, body: Any) -> Any:
    """Check the documented shape: a plain list, but activity types as {"user": [], "system": []}
    (a plain list of typed items is tolerated and grouped by category)."""
    if field_name == "activity_types":
        if isinstance(body, list):
            return {
                category: [t for t in body if isinstance(t, dict) and t.get("category") == category]
                for category in ("user", "system")
            }
        if isinstance(body, dict):
            return {
                category: [{"category": category, **item} for item in items or []]
                for category, items in body.items()
                if category in ("user", "system")
            }
    elif isinstance(body, list):
        return body
    raise ApiResponseError(
        "copper", f"GET {path} answered {type(body).__name__}, not the documented shape"
    )
