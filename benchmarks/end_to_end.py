"""The whole cycle against both sandboxes in process: full, 1% changed, unchanged.

    python benchmarks/end_to_end.py [--scale 100] [--change 0.01] [--seed 0] [--start-date D]
                                    [--cold] [--history 0] [--rounds 1]
    python benchmarks/end_to_end.py --compare   # scale 10 at 1% against scale 100 at 0.1%

``--scale`` is the Copper sandbox's (1.0: 1,000 leads, 1,000 people, 100 companies, 300
opportunities, 2,000 activities); the default 100 is 100,000 people and 10,000 companies. Planhat
is seeded at the same scale, with the team members Copper's companies name as owners.

1. ``run_sync(full=True)``: every Copper partition, both Planhat snapshots, Hull's first load,
   every in-segment record delivered.
2. ``--change`` of the people (``title``, mapped to the enduser's ``position``) and of the
   companies (``name``, mapped to the company's ``name``) edited in Copper, then ``run_sync()``.
   With ``--rounds N``, step 2 is repeated N times (other records each time: a poll's
   steady state, not only the first cycle after a full load).
3. ``run_sync()`` with nothing changed: it must write nothing to Planhat and upsert nothing in
   Hull (the benchmark exits non-zero otherwise).

Each pass reports wall time and peak memory (each Dagster job's too), every request the
sandboxes served by kind, and the minimum each kind needs: Copper searches over the records in
the window the pass must fetch (the value-cursor walk that never skips: each search re-reads the
last second of the page before; activities, which have no sort, in as few windows as the cap
allows, and the one search that shows a window needs splitting; one ``ids`` search per 200 records that Connect fields point to; after a clean sync,
whose cursor the warehouse keeps, one newest-change question per sortable object and one
activity question, then only the objects they found changed, in the window Copper's own data
says they need), the metadata at most once, one Planhat snapshot before delivery when one is due (the
fetch interval passed, or records were created or left in doubt since the newest) and one after
it when the delivery created records or left outcomes in doubt (lists end on a short page), and ceil(records / batch size) bulk writes
for what the pass delivered (one POST a record for a POST destination; nothing in pass 3). For
the incremental passes it also says how many records changed since the previous pass began,
and how few searches would fetch only those. Hull upserts and deliveries per run come from the
warehouse. Peak memory is the process's resident high-water mark (Linux ``VmHWM``, reset before
each job), so it includes both sandboxes' data; each step's share is the resident memory
sampled every 10 ms inside it, above what the job began with. The sandboxes answer from threads
of this process: the CPU their handlers spent (``sandbox_cpu_seconds``) is printed beside each
pass, time that, under one interpreter lock, the pipeline's own threads could not have; so is
the time Python's garbage collector ran (``collector``: all of it, and its full passes, which
walk the sandboxes' objects too and cost seconds each at scale 1,000). Each
pass also says how much of the warehouse file the page cache held when it began, so that a
slow pass can be told apart from one that read the warehouse back from disk; ``--cold`` drops
the file from the page cache before each incremental pass, to measure the second kind.

``--history N`` appends to ``planhat.deliveries``, after the full pass, N copies of that pass's
rows, the k-th dated k days earlier (as N earlier days of deliveries would have left it): the
incremental passes then show what the delivery history, which only grows, costs a cycle.

``--compare`` runs scale 10 with ``--change 0.01`` and scale 100 with ``--change 0.001`` (the
same 100 changed people), five rounds each (``--rounds``), and compares the medians of the
incremental passes' cycle: every job but the Planhat snapshot (a full list by nature), seconds
summed and the highest peak above the resident memory the pass began with; it fails above
x1.5, when a pass makes more requests than its minimum, or when the unchanged pass writes to
Planhat or upserts in Hull. The one excess it allows is printed (``window_cut_pages``): each
activity window ends on a partial page of its own, and partial pages do not add up, so where
the walk cuts its windows decides a search more or less; and a window found over the cap
costs the search that shows it. The minimum cuts into the fewest equal windows and counts one
such search; the walk, which knows no count, halves the whole range, then cuts each half into
equal time spans sized by its header, and where that falls moves with the time of day.

The run is as the command line does it (``run_sync``), with these differences, all printed:
a temporary warehouse; a temporary Dagster instance (``DAGSTER_HOME``) every pass shares,
as the daemon's sensors share theirs: what the instance remembers decides what an unchanged
source asks for (with an ephemeral instance per pass, every pass would run the whole chain); the packaged configuration with the client
throttles raised (the benchmark measures the pipeline, not Copper's 180 or Planhat's 200
requests a minute; ``minutes_at_rate_limit`` says what those would add); ``--start-date``
(default: the packaged one) to see Dagster's per-partition cost; Hull forwarding off.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import datetime as dt
import json
import math
import mmap
import os
import random
import re
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hull_planhat_pipelines.clients.copper import (
    COPPER_OBJECTS,
    MAX_PAGE_SIZE,
    SEARCH_RESULT_CAP,
    CopperMetadata,
    metadata_requests,
    search_requests,
    value_cursor_searches,
)
from hull_planhat_pipelines.clients.planhat import (
    COMPANY_PAGE_CAP,
    ENDUSER_PAGE_CAP,
    USER_PAGE_CAP,
)
from hull_planhat_pipelines.sandbox.copper import CopperSandbox
from hull_planhat_pipelines.sandbox.copper_seed import PLANHAT_TEAM_SIZE, planhat_user_ids
from hull_planhat_pipelines.sandbox.planhat import PlanhatSandbox
from hull_planhat_pipelines.settings import default_config_path, load_settings
from hull_planhat_pipelines.sync.batching import batch_count
from hull_planhat_pipelines.sync.copper.records import connect_targets
from hull_planhat_pipelines.sync.planhat.snapshot_due import READ_BACK_STATUSES

from collector import CollectorClock
from machine import MachineSpeed

COPPER_RATE_PER_MINUTE = 180
PLANHAT_RATE_PER_MINUTE = 200
UNTHROTTLED = 1_000_000
"""``requests_per_minute`` in the benchmark's configuration: the throttle never waits."""
PLANHAT_WRITE_KINDS = ("PUT", "POST", "PATCH", "DELETE")


# -- memory ----------------------------------------------------------------------------------
def _reset_peak() -> bool:
    """Reset the kernel's resident high-water mark (Linux), so a pass's peak is its own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss_mb(field: str) -> float | None:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = re.search(rf"{field}:\s+(\d+)", status)
    return int(found.group(1)) / 1024 if found else None


def page_cache_mb(path: str) -> tuple[float, float] | None:
    """How much of the file at ``path`` the kernel's page cache holds, and the file's size (MB),
    by ``mincore`` on a mapping that reads nothing. A full pass at scale 1,000 peaks near the
    machine's memory, which may evict the warehouse before the next pass (at scale 100, a pass
    started with it evicted took no longer). ``None`` where ``mincore`` is not available."""
    try:
        size = os.path.getsize(path)
        if size == 0:
            return 0.0, 0.0
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_long,
        ]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        pages = -(-size // mmap.PAGESIZE)
        vector = (ctypes.c_ubyte * pages)()
        fd = os.open(path, os.O_RDONLY)
        try:
            address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if address in (None, ctypes.c_void_p(-1).value):
                return None
            try:
                if libc.mincore(address, size, vector) != 0:
                    return None
            finally:
                libc.munmap(address, size)
        finally:
            os.close(fd)
    except (OSError, AttributeError):
        return None
    resident = int((np.frombuffer(vector, dtype=np.uint8) & 1).sum()) * mmap.PAGESIZE
    return round(resident / 2**20, 1), round(size / 2**20, 1)


def evict_from_page_cache(path: str) -> None:
    """Ask the kernel to drop the file's cached pages (written back first), as memory pressure
    from a large full pass may have done: ``--cold`` starts each incremental pass so, to measure
    a pass that reads the warehouse back from disk. Nothing where ``posix_fadvise`` is missing
    (the pass's page-cache line then shows the file still cached)."""
    if not hasattr(os, "posix_fadvise"):
        return
    for name in (path, f"{path}.wal"):
        if not os.path.exists(name):
            continue
        fd = os.open(name, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def process_peak_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


# -- configuration and environment -----------------------------------------------------------
def write_config(directory: Path, start_date: dt.date | None) -> tuple[Path, dict[str, Any]]:
    """The packaged configuration with the throttles raised (and ``start_date`` if given)."""
    data = yaml.safe_load(default_config_path().read_text(encoding="utf-8"))
    data["copper"]["requests_per_minute"] = UNTHROTTLED
    data.setdefault("planhat", {})["requests_per_minute"] = UNTHROTTLED
    if start_date is not None:
        data["copper"]["start_date"] = start_date.isoformat()
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    load_settings(path)  # fail here, not inside the first run
    return path, {
        "copper.requests_per_minute": UNTHROTTLED,
        "planhat.requests_per_minute": UNTHROTTLED,
        "copper.start_date": str(data["copper"]["start_date"]),
    }


@contextlib.contextmanager
def environment(values: dict[str, str], removed: tuple[str, ...]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in (*values, *removed)}
    os.environ.update(values)
    for name in removed:
        os.environ.pop(name, None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# -- the 1% change ---------------------------------------------------------------------------
def change_records(
    copper: CopperSandbox, fraction: float, rng: random.Random
) -> dict[str, list[int]]:
    """Edit ``fraction`` of the people (title) and companies (name), as a user in Copper would:
    the field changes and ``date_modified`` moves to now."""
    edits = {"people": "title", "companies": "name"}
    changed: dict[str, list[int]] = {}
    now = copper.clock()
    for object_name, field_name in edits.items():
        ids = _alive_ids(copper, object_name)
        count = min(len(ids), max(1, round(len(ids) * fraction))) if fraction > 0 else 0
        chosen = sorted(rng.sample(ids.tolist(), count))
        records = []
        for record_id in chosen:
            record = copper.record(object_name, record_id)
            assert record is not None
            old = record.get(field_name) or ""
            record[field_name] = f"{old} (edited)".strip() if old else "Edited"
            record["date_modified"] = now
            records.append(record)
        copper.upsert_records(object_name, records)
        changed[object_name] = chosen
    return changed


def _alive_ids(copper: CopperSandbox, object_name: str) -> np.ndarray:
    table = copper._table(object_name)  # the columns, without materializing every record
    with table.lock:
        return table.columns["id"][table.alive_rows()].copy()


# -- requests --------------------------------------------------------------------------------
_ID = re.compile(r"/(?:[0-9a-f]{24}|extid-[^/]+|srcid-[^/]+|\d+)(?=/|$)")


def copper_kind(method: str, path: str) -> str:
    found = re.fullmatch(r"/(\w+)/search", path)
    if found and found.group(1) in COPPER_OBJECTS:
        return f"search/{found.group(1)}"
    if path == "/users/search" or (method == "GET" and path.count("/") == 1):
        return "metadata"
    return f"{method} {_ID.sub('/{id}', path)}"


def planhat_kind(method: str, path: str) -> str:
    path = re.sub(r"^/(analytics/bulk|analytics|dimensiondata)/[^/]+$", r"/\1", path)
    return f"{method} {_ID.sub('/{id}', path)}"


def requests_since(server: Any, start: int, kind_of: Any) -> tuple[Counter[str], Counter[str]]:
    """Requests recorded after the first ``start``, by kind, and the non-2xx ones by kind."""
    rows = server.recorded()[start:]
    kinds: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    for row in rows:
        kind = kind_of(row.method, row.path)
        kinds[kind] += 1
        if not 200 <= row.status < 300:
            failed[kind] += 1
    return kinds, failed


# -- minimum requests ------------------------------------------------------------------------
def _utc_day(second: int) -> dt.date:
    return dt.datetime.fromtimestamp(second, dt.UTC).date()


def split_searches(records: int, page_size: int, cap: int) -> int:
    """Activities have no sort: the fewest searches under the cap, each ending on a short page,
    plus, when they do not fit one search, the one that shows it. Copper has no count: only a
    search's first page says (``X-PW-TOTAL``) that its window holds more than the cap, and that
    page is of the whole window, so no walk of the windows it is split into can reuse it."""
    sizes = split_sizes(records, cap)
    return (len(sizes) > 1) + sum(search_requests(size, page_size) for size in sizes)


def split_sizes(records: int, cap: int) -> list[int]:
    """The records of the fewest windows under the cap, as equal as counts go."""
    parts = max(1, math.ceil(records / cap))
    return [records // parts + (1 if i < records % parts else 0) for i in range(parts)]


def split_loss(sizes: list[int], page_size: int = MAX_PAGE_SIZE) -> int:
    """Searches that walking windows of ``sizes`` records costs over one walk of them all:
    every window ends on a page of its own, short or empty (the proof of its end)."""
    if not sizes:
        return 0
    return sum(search_requests(size, page_size) for size in sizes) - search_requests(
        sum(sizes), page_size
    )


Window = tuple[int | dict[str, int] | None, int]
"""Inclusive Unix seconds ``(low, high)`` of a fetch; ``low`` per object when a mapping, ``None``
for everything older."""


def copper_window(since: dict[str, int] | None, today: dt.date) -> Window:
    """The window a pass fetches: from each object's resume point (``None``: a full fetch)
    through the last second of ``today`` (the activity horizon's day)."""
    end = dt.datetime.combine(today + dt.timedelta(days=1), dt.time(), dt.UTC)
    return since, int(end.timestamp()) - 1


def user_activities(copper: CopperSandbox, rows: np.ndarray) -> np.ndarray:
    """Which of the activity table's ``rows`` are user activities, the ones a sync fetches
    (called under the table's lock)."""
    user_types = [int(t["id"]) for t in copper.metadata.activity_types.get("user", [])]
    columns = copper._table("activities").columns
    return (columns["type_category"][rows] == 0) & np.isin(columns["type_id"][rows], user_types)


def copper_in_window(
    copper: CopperSandbox, window: Window, objects: set[str] | None = None
) -> dict[str, Any]:
    """Per object: how many records the window holds and the fewest searches that fetch them
    (none for an object outside ``objects``: the pass has no cause to fetch it)."""
    lows, high = window
    metadata = CopperMetadata(custom_field_definitions=copper.metadata.custom_field_definitions)

    def connects(name: str) -> bool:
        kind = COPPER_OBJECTS[name].record_type
        return any(
            d.data_type == "Connect" and kind in d.available_on
            for d in metadata.custom_field_definitions
        )

    lookups: Counter[str] = Counter()
    found: dict[str, Any] = {}
    for name, obj in COPPER_OBJECTS.items():
        if objects is not None and name not in objects:
            found[name] = {"records": 0, "searches": 0}
            continue
        low = lows.get(name) if isinstance(lows, dict) else lows
        table = copper._table(name)
        with table.lock:
            rows = table.alive_rows()
            cols = table.columns
            dates = cols[obj.date_field][rows]
            created = cols["date_created"][rows]
            keep = dates <= high
            if low is not None:
                keep &= dates >= low
            if name == "activities":
                keep &= user_activities(copper, rows)
            keys = sorted(zip(dates[keep].tolist(), created[keep].tolist(), strict=True))
            dates = np.sort(dates[keep])
        if obj.sort_by is not None:  # the walk that never skips (see clients/copper.py)
            searches = value_cursor_searches(keys, MAX_PAGE_SIZE)
        else:
            searches = split_searches(len(dates), MAX_PAGE_SIZE, SEARCH_RESULT_CAP)
        found[name] = {"records": len(dates), "searches": searches}
        if len(dates):
            with table.lock:
                kept = [table.record(int(r)) for r in rows[keep]] if connects(name) else []
            for kind, ids in connect_targets(name, kept, metadata).items():
                target = next(n for n, o in COPPER_OBJECTS.items() if o.record_type == kind)
                lookups[target] += -(-len(ids) // MAX_PAGE_SIZE)  # names of connected records
    for name, extra in lookups.items():
        found[name]["searches"] += extra
    return found


def walked_windows(copper: CopperSandbox, rows: list[Any]) -> tuple[list[int], int]:
    """Records of each activity window the pass walked to its end (its searches in ``rows``),
    and the searches of the windows the walk split (their first page showed them over the cap,
    or they reached it): those are left out of the sizes, their parts are among the windows.

    Where the walk cuts a window decides how many searches the parts take: their last pages
    are partial, and partial pages do not add up (97,953 and 52,013 activities take 490 + 261
    searches; the minimum's equal halves of 74,983, 375 + 375). The walk cuts at times, knowing
    no count (halves, then spans sized by a split window's header), and where that falls in
    the records moves with the time of day (the sandbox dates activities relative to now)."""
    obj = COPPER_OBJECTS["activities"]
    table = copper._table(obj.name)
    windows: Counter[tuple[int | None, int | None]] = Counter()
    for row in rows:
        body = row.body
        if copper_kind(row.method, row.path) == "search/activities" and body is not None:
            if body.get("page_size") != MAX_PAGE_SIZE:  # a poll's one-record question
                continue
            windows[(body.get(obj.min_key), body.get(obj.max_key))] += 1
    sizes: list[int] = []
    split = 0
    with table.lock:
        alive = table.alive_rows()
        dates = table.columns[obj.date_field][alive]
        user = user_activities(copper, alive)
        for low, high in windows:
            if any(_within(inner, (low, high)) for inner in windows if inner != (low, high)):
                split += windows[(low, high)]
                continue
            keep = user.copy()
            if low is not None:
                keep &= dates >= low
            if high is not None:
                keep &= dates <= high
            sizes.append(int(keep.sum()))
    return sizes, split


def _within(inner: tuple[int | None, int | None], outer: tuple[int | None, int | None]) -> bool:
    """Whether the inclusive window ``inner`` lies in ``outer`` (``None``: open on that side)."""
    low_in = outer[0] is None or (inner[0] is not None and outer[0] <= inner[0])
    high_in = outer[1] is None or (inner[1] is not None and inner[1] <= outer[1])
    return low_in and high_in


def newest_in_sandbox(copper: CopperSandbox, name: str) -> int | None:
    """The newest modification Copper holds for a sortable object (what a poll asks)."""
    table = copper._table(name)
    with table.lock:
        rows = table.alive_rows()
        if not len(rows):
            return None
        return int(table.columns[COPPER_OBJECTS[name].date_field][rows].max())


def activity_dated_in(copper: CopperSandbox, low: int, high: int) -> bool:
    """Whether Copper holds an activity of any type dated in [low, high] (the poll's probe)."""
    table = copper._table("activities")
    with table.lock:
        rows = table.alive_rows()
        dates = table.columns[COPPER_OBJECTS["activities"].date_field][rows]
        return bool(((dates >= low) & (dates <= high)).any())


def polled_window(
    copper: CopperSandbox, cursor_text: str, now: int, settings: Any
) -> tuple[Window, set[str], Counter[str]]:
    """The window a sync with a saved cursor must fetch, from what Copper holds: the records
    changed since the cursor's newest change per object, activities dated since its last check
    (from that day's start) or, once the re-scan is due, its trailing days; and the probes that
    find this out (one newest-change question per sortable object, one activity question)."""
    from hull_planhat_pipelines.orchestration import SORTABLE_OBJECTS, plan_poll
    from hull_planhat_pipelines.sync.copper.polling import CopperCursor, merge_runs

    cursor = CopperCursor.parse(cursor_text)
    probes: Counter[str] = Counter({f"search/{name}": 1 for name in SORTABLE_OBJECTS})
    checked = cursor.activities_checked
    if checked is not None:
        probes["search/activities"] += 1
    runs, _ = plan_poll(
        settings,
        cursor,
        {name: newest_in_sandbox(copper, name) for name in SORTABLE_OBJECTS},
        checked is None or activity_dated_in(copper, checked, now),
        now,
    )
    run = merge_runs(runs, "minimum")
    if run is None:
        return (None, 0), set(), probes
    return (dict(run.since or {}), int(run.until or 0)), set(run.objects), probes


def planhat_counts(planhat: PlanhatSandbox) -> dict[str, int]:
    """What a listing returns now (archived endusers are not listed)."""
    store = planhat.store
    return {
        "companies": len(store.all("companies")),
        "endusers": len(store.all("endusers", include_archived=False)),
        "users": len(store.all("users")),
    }


def snapshot_minimum(counts: dict[str, int]) -> Counter[str]:
    return Counter(
        {
            "GET /companies": counts["companies"] // COMPANY_PAGE_CAP + 1,
            "GET /endusers": counts["endusers"] // ENDUSER_PAGE_CAP + 1,
            "GET /users": counts["users"] // USER_PAGE_CAP + 1,
        }
    )


def delivery_minimum(delivered: dict[str, int], settings: Any) -> Counter[str]:
    """Bulk writes for what was delivered: ceil(n / batch) per target; POSTs one by one."""
    minimum: Counter[str] = Counter()
    bulk = {
        "companies": ("PUT /companies", settings.planhat.batch_size),
        "endusers": ("PUT /endusers", settings.planhat.batch_size),
        "activities": ("POST /analytics/bulk", settings.planhat.analytics_batch_size),
        "metrics": ("POST /dimensiondata", settings.planhat.analytics_batch_size),
    }
    destinations = {d.name: d for d in settings.destinations}
    for target, count in delivered.items():
        if target in bulk:
            kind, size = bulk[target]
            minimum[kind] += batch_count(count, size)
        elif target in destinations:
            d = destinations[target]
            kind = f"{d.method} {_ID.sub('/{id}', d.path.replace('{external_id}', 'x'))}"
            minimum[kind] += batch_count(count, d.batch_size) if d.is_bulk else count
    return minimum


# -- per-job timing --------------------------------------------------------------------------
def step_windows() -> dict[str, tuple[float, float]]:
    """``(start, end)`` (Unix seconds) per step of the run just finished (the instance's step
    stats): where a job's time goes, and what is left to Dagster around the steps."""
    import dagster as dg

    if not os.environ.get("DAGSTER_HOME"):
        return {}
    instance = dg.DagsterInstance.get()
    runs = instance.get_runs(limit=1)
    if not runs:
        return {}
    stats = instance.get_run_step_stats(runs[0].run_id)
    return {
        s.step_key: (s.start_time, s.end_time)
        for s in stats
        if s.start_time is not None and s.end_time is not None
    }


def step_seconds(windows: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Seconds per step, longest first."""
    found = {step: round(end - start, 2) for step, (start, end) in windows.items()}
    return dict(sorted(found.items(), key=lambda item: -item[1]))


class RssSampler:
    """The resident memory every ``every`` seconds while a job runs, to tell which step its
    peak belongs to (a sample misses a shorter spike; the job's own peak is ``VmHWM``'s)."""

    def __init__(self, every: float = 0.01) -> None:
        self.every = every
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = _rss_mb("VmRSS")
            if rss is None:
                return
            self.samples.append((time.time(), rss))
            self._stop.wait(self.every)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def step_peaks(
        self, windows: dict[str, tuple[float, float]], baseline: float | None
    ) -> dict[str, float]:
        """Per step, the highest sample inside its window above ``baseline`` (the job's
        starting RSS), highest first."""
        if baseline is None:
            return {}
        found = {}
        for step, (start, end) in windows.items():
            inside = [rss for at, rss in self.samples if start <= at <= end]
            if inside:
                found[step] = round(max(max(inside) - baseline, 0.0), 1)
        return dict(sorted(found.items(), key=lambda item: -item[1]))


@contextlib.contextmanager
def timed_jobs(jobs: list[dict[str, Any]]) -> Iterator[None]:
    """Time each Dagster job ``run_sync`` runs (and its peak RSS, where it can be reset) by
    wrapping the command line's job runner; without that hook the pass is timed as a whole."""
    from hull_planhat_pipelines import cli

    original = getattr(cli, "_run_job", None)
    if original is None:
        yield
        return

    def run_job(defs: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        reset = _reset_peak()
        baseline = _rss_mb("VmRSS")
        began = time.perf_counter()
        sampler = RssSampler()
        try:
            with sampler:
                return original(defs, name, *args, **kwargs)
        finally:
            peak = _rss_mb("VmHWM") if reset else None
            seconds = time.perf_counter() - began
            windows = step_windows()
            steps = step_seconds(windows)
            jobs.append(
                {
                    "job": name,
                    "seconds": round(seconds, 2),
                    "peak_mb": round(peak, 1) if peak is not None else None,
                    "steps": steps,
                    "step_mb_above_start": sampler.step_peaks(windows, baseline),
                    "outside_steps": round(seconds - sum(steps.values()), 2),
                }
            )

    cli._run_job = run_job
    try:
        yield
    finally:
        cli._run_job = original


SNAPSHOT_JOBS = ("planhat_fetch",)
"""Jobs that take a Planhat snapshot: a full list by nature, left out of the cycle's cost."""


def cycle_cost(jobs: list[dict[str, Any]], baseline_mb: float | None) -> dict[str, Any]:
    """Every job of the pass but the Planhat snapshots: seconds summed, and the highest peak
    above the resident memory the pass began with."""
    kept = [j for j in jobs if not any(name in j["job"] for name in SNAPSHOT_JOBS)]
    peaks = [j["peak_mb"] for j in kept if j["peak_mb"] is not None]
    above = max(peaks) - baseline_mb if peaks and baseline_mb is not None else None
    return {
        "jobs": [j["job"] for j in kept],
        "seconds": round(sum(j["seconds"] for j in kept), 2),
        "mb_above_baseline": round(max(above, 0.0), 1) if above is not None else None,
    }


# -- the warehouse ---------------------------------------------------------------------------
def warehouse_counts(database: str) -> dict[str, dict[str, Any]]:
    """Rows per run of the append-only tables: Hull upserts and Planhat deliveries."""
    import duckdb

    found: dict[str, dict[str, Any]] = {"user_upserts": {}, "account_upserts": {}, "deliveries": {}}
    if not Path(database).exists():
        return found
    conn = duckdb.connect(database, read_only=True)
    try:
        tables = {
            f"{s}.{t}"
            for s, t in conn.execute(
                "select table_schema, table_name from information_schema.tables"
            ).fetchall()
        }
        for name in ("user_upserts", "account_upserts"):
            if f"hull.{name}" in tables:
                rows = conn.execute(
                    f"select run_id, count(*) from hull.{name} group by 1 order by min(computed_at)"
                ).fetchall()
                found[name] = {run: int(n) for run, n in rows}
        if "planhat.deliveries" in tables:
            rows = conn.execute(
                "select run_id, target, status, count(*) from planhat.deliveries "
                "group by 1, 2, 3 order by min(delivered_at)"
            ).fetchall()
            for run, target, status, n in rows:
                found["deliveries"].setdefault(run, Counter())[f"{target}:{status}"] += int(n)
    finally:
        conn.close()
    return found


def store_reads(after_timestamp: float) -> list[dict[str, Any]]:
    """What each Hull sync since ``after_timestamp`` read of the profile store, oldest first:
    the ``store_read`` metadata of its ``hull/user_upserts`` materialization (the slice an
    incremental sync reads is its cost; see ``warehouse.hull_apply.store_read``)."""
    import dagster as dg

    instance = dg.DagsterInstance.get()
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=dg.AssetKey(["hull", "user_upserts"]), after_timestamp=after_timestamp
        ),
        limit=1000,
        ascending=True,
    ).records
    found = []
    for record in records:
        materialization = record.asset_materialization
        value = materialization.metadata.get("store_read") if materialization else None
        if value is not None:
            found.append(getattr(value, "value", value))
    return found


def new_runs(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    return {run: value for run, value in after.items() if run not in before}


DELIVERED_STATUSES = ("created", "updated", "unchanged", "sent")


# -- one pass --------------------------------------------------------------------------------
def one_pass(
    label: str,
    *,
    full: bool,
    copper: CopperSandbox,
    planhat: PlanhatSandbox,
    database: str,
    changed: dict[str, list[int]] | None = None,
    since: int | None = None,
    cold: bool = False,
) -> dict[str, Any]:
    from hull_planhat_pipelines.cli import run_sync
    from hull_planhat_pipelines.orchestration import (
        COMMAND_LINE_POLL,
        SNAPSHOT_TARGETS,
        catch_up_since,
    )
    from hull_planhat_pipelines.sync.planhat.snapshot_due import snapshot_due
    from hull_planhat_pipelines.warehouse import snapshot_age
    from hull_planhat_pipelines.warehouse.poll_cursors import read_poll_cursor

    settings = load_settings()
    # Copper dates are whole seconds: no edit shares the pass's second, nor the one before,
    # which a poll fetches again in case its clock and Copper's differ (a poll five minutes
    # after edits spread over those minutes rarely meets one)
    time.sleep(2 - time.time() % 1)
    started = int(time.time())
    today = _utc_day(started)
    resume = None if full else catch_up_since(settings, today)
    # the command line's Copper cursor as the last clean sync left it (read, not taken)
    saved = None if resume is None else read_poll_cursor(COMMAND_LINE_POLL, database)
    ahead = today + dt.timedelta(days=settings.copper.activity_horizon_days)
    probes: Counter[str] = Counter()
    if saved is not None:  # the last clean sync's cursor: what changed since, after probes
        window, objects, probes = polled_window(copper, saved, started, settings)
        lows = window[0]
        first = min(
            (_utc_day(s) for s in lows.values()) if isinstance(lows, dict) else (), default=today
        )
        in_window = copper_in_window(copper, window, objects)
    else:  # from the warehouse's resume points (everything on a full pass)
        first = (
            settings.copper.start_date
            if resume is None
            else max(settings.copper.start_date, min(_utc_day(s) for s in resume.values()))
        )
        window = copper_window(resume, ahead)
        in_window = copper_in_window(copper, window)
    # What changed since the previous pass began: what a fetch of changes alone would need.
    news = (
        copper_in_window(copper, (since, window[1] or copper_window(None, ahead)[1]))
        if since is not None
        else None
    )
    age = snapshot_age(database, SNAPSHOT_TARGETS)
    snapshot_due_because = snapshot_due(
        age, dt.datetime.now(dt.UTC), settings.planhat.fetch_interval_minutes, full=full
    )
    planhat_before = planhat_counts(planhat)
    copper_start = len(copper.server.recorded())
    rest_start = len(planhat.rest.recorded())
    analytics_start = len(planhat.analytics.recorded())
    writes_start = planhat.write_count()
    tables_before = warehouse_counts(database)
    servers = (copper.server, planhat.rest, planhat.analytics)
    sandbox_cpu_start = sum(server.cpu_seconds for server in servers)

    jobs: list[dict[str, Any]] = []
    if cold:
        evict_from_page_cache(database)
    cached = page_cache_mb(database)
    baseline_mb = _rss_mb("VmRSS")
    began = time.perf_counter()
    with CollectorClock() as collector, timed_jobs(jobs):
        summary = run_sync(full=full)
    seconds = time.perf_counter() - began
    sandbox_cpu = sum(server.cpu_seconds for server in servers) - sandbox_cpu_start
    peaks = [j["peak_mb"] for j in jobs if j["peak_mb"] is not None]
    peak = max(peaks) if peaks else None

    planhat_after = planhat_counts(planhat)
    copper_kinds, copper_failed = requests_since(copper.server, copper_start, copper_kind)
    # the searches where the walk's activity windows were cut cost beyond the minimum's cuts:
    # their partial pages, and the searches of the windows it split beyond the one it counts
    walked, split = walked_windows(copper, copper.server.recorded()[copper_start:])
    fewest = split_sizes(in_window["activities"]["records"], SEARCH_RESULT_CAP)
    cut_pages = max(0, split_loss(walked) - split_loss(fewest)) + max(0, split - (len(fewest) > 1))
    rest_kinds, rest_failed = requests_since(planhat.rest, rest_start, planhat_kind)
    analytics_kinds, analytics_failed = requests_since(
        planhat.analytics, analytics_start, planhat_kind
    )
    planhat_kinds = rest_kinds + analytics_kinds
    writes = planhat.write_count() - writes_start
    tables_after = warehouse_counts(database)
    upserts = {
        name: new_runs(tables_before[name], tables_after[name])
        for name in ("user_upserts", "account_upserts")
    }
    deliveries = new_runs(tables_before["deliveries"], tables_after["deliveries"])
    by_target: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    for counts in deliveries.values():
        for key, n in counts.items():
            target, status = key.split(":", 1)
            outcomes[key] += n
            if status in DELIVERED_STATUSES:
                by_target[target] += n

    minimum_copper: Counter[str] = Counter(
        {f"search/{name}": found["searches"] for name, found in in_window.items()}
    )
    minimum_copper.update(probes)
    if copper_kinds["metadata"]:  # at most once a pass; a fresh cached copy needs none
        minimum_copper["metadata"] = metadata_requests(len(copper.metadata.users))
    # a snapshot after delivery reads back what Planhat created or left in doubt; updates
    # alone are named by its answer
    read_back = any(
        n
        for key, n in outcomes.items()
        if key.split(":", 1)[0] in SNAPSHOT_TARGETS and key.split(":", 1)[1] in READ_BACK_STATUSES
    )
    minimum_planhat = snapshot_minimum(planhat_before) if snapshot_due_because else Counter()
    if read_back:
        minimum_planhat += snapshot_minimum(planhat_after)
    minimum_planhat += delivery_minimum(dict(by_target), settings)

    requests = {
        "copper": dict(sorted(copper_kinds.items())),
        "planhat": dict(sorted(planhat_kinds.items())),
        "planhat_writes": writes,
        "total": sum(copper_kinds.values()) + sum(planhat_kinds.values()),
    }
    minimum = {
        "copper": dict(sorted(minimum_copper.items())),
        "planhat": dict(sorted(minimum_planhat.items())),
        "planhat_writes": sum(
            n for kind, n in minimum_planhat.items() if kind.split()[0] in PLANHAT_WRITE_KINDS
        ),
        "total": sum(minimum_copper.values()) + sum(minimum_planhat.values()),
    }
    failed_steps = [f"{s.step}: {s.detail}" for s in summary.steps if not s.ok]
    result = {
        "pass": label,
        "full": full,
        "ok": summary.ok,
        "failed_steps": failed_steps,
        "seconds": round(seconds, 2),
        "sandbox_cpu_seconds": round(sandbox_cpu, 2),
        "collector": collector.report(),
        "peak_mb": round(peak, 1) if peak is not None else None,
        "planhat_snapshot_before_delivery": snapshot_due_because or "not due",
        "copper_window": {
            "first_partition": first.isoformat(),
            "low": window[0],
            "high": window[1],
            "records": {name: found["records"] for name, found in in_window.items()},
        },
        "changed_in_copper": {k: len(v) for k, v in (changed or {}).items()},
        "copper_modified_since_previous_pass": (
            {
                "records": {name: found["records"] for name, found in news.items()},
                "searches": sum(found["searches"] for found in news.values()),
            }
            if news is not None
            else None
        ),
        "started_unix": started,
        "requests": requests,
        "minimum_requests": minimum,
        "window_cut_pages": {"search/activities": cut_pages} if cut_pages else {},
        "failed_requests": dict(copper_failed + rest_failed + analytics_failed),
        "hull_user_upserts": sum(sum(runs.values()) for runs in [upserts["user_upserts"]]),
        "hull_account_upserts": sum(upserts["account_upserts"].values()),
        "hull_upserts_by_run": {
            name: list(runs.values()) for name, runs in upserts.items() if runs
        },
        "hull_store_read_by_run": store_reads(float(started)),
        "delivered": dict(sorted(by_target.items())),
        "delivery_outcomes": dict(sorted(outcomes.items())),
        "planhat_before": planhat_before,
        "planhat_after": planhat_after,
        "jobs": jobs,
        "baseline_mb": round(baseline_mb, 1) if baseline_mb is not None else None,
        "cycle": cycle_cost(jobs, baseline_mb),
        "warehouse_page_cache_mb": (
            {"cached": cached[0], "file": cached[1]} if cached is not None else None
        ),
    }
    print_pass(result)
    return result


def _cut_pages_note(p: dict[str, Any]) -> str:
    cut = sum(p["window_cut_pages"].values())
    return f", and {cut} from where the walk cut its activity windows" if cut else ""


def print_pass(p: dict[str, Any]) -> None:
    status = "ok" if p["ok"] else f"FAILED ({'; '.join(p['failed_steps'])})"
    peak = (
        f"{p['peak_mb']} MB peak RSS"
        if p["peak_mb"] is not None
        else "no Dagster run started"
        if not p["jobs"]
        else "peak RSS n/a"
    )
    print(f"\n== pass {p['pass']}: {p['seconds']:.1f} s, {peak}, {status}")
    print(
        f"   of which the sandboxes' handlers: {p['sandbox_cpu_seconds']:.1f} s of CPU (in this"
        " process, under its one interpreter lock: time a real API would spend elsewhere)"
    )
    gc_pass = p["collector"]
    print(
        f"   the garbage collector ran {gc_pass['seconds']:.1f} s, of which"
        f" {gc_pass['full_passes']} full pass(es) {gc_pass['full_seconds']:.1f} s (the longest"
        f" {gc_pass['longest_full_seconds']:.1f} s; a full pass walks the sandboxes' objects too)"
    )
    cached = p.get("warehouse_page_cache_mb")
    if cached and cached["file"]:
        print(
            f"   warehouse file at the start: {cached['cached']:,.0f} of {cached['file']:,.0f} MB"
            " in the page cache"
        )
    cycle = p.get("cycle")
    if cycle and cycle["jobs"]:
        print(
            f"   cycle without Planhat snapshots: {cycle['seconds']:.1f} s,"
            f" +{cycle['mb_above_baseline']} MB above the pass's {p['baseline_mb']} MB"
        )
    if p["jobs"]:
        print(
            "   jobs: "
            + ", ".join(f"{j['job']} {j['seconds']:.1f} s/{j['peak_mb']} MB" for j in p["jobs"])
        )
        for j in p["jobs"]:
            if j.get("steps"):
                top = ", ".join(f"{k} {v:.1f}" for k, v in list(j["steps"].items())[:6])
                print(f"     {j['job']}: outside steps {j['outside_steps']:.1f} s; steps {top}")
            if j.get("step_mb_above_start"):
                top = ", ".join(f"{k} +{v}" for k, v in list(j["step_mb_above_start"].items())[:6])
                print(f"     {j['job']}: MB above the job's start, sampled: {top}")
    print(f"   Planhat snapshot before delivery: {p['planhat_snapshot_before_delivery']}")
    window = p["copper_window"]
    print(f"   copper window from partition {window['first_partition']}: {window['records']}")
    if p["changed_in_copper"]:
        print(f"   changed in Copper before the pass: {p['changed_in_copper']}")
    news = p["copper_modified_since_previous_pass"]
    if news is not None:
        print(
            f"   modified in Copper since the previous pass began: {news['records']} "
            f"({news['searches']} searches would fetch them; the window above is what the "
            "pass fetched)"
        )
    for system in ("copper", "planhat"):
        sent, least = p["requests"][system], p["minimum_requests"][system]
        print(f"   {system} requests (sent / minimum):")
        for kind in sorted(set(sent) | set(least)):
            got, need = sent.get(kind, 0), least.get(kind, 0)
            flag = "" if got == need else f"  ({got - need:+d})"
            if cut := p["window_cut_pages"].get(kind) if system == "copper" else None:
                flag += f"  ({cut} from where the walk cut its windows)"
            print(f"     {kind:<28} {got:>7} / {need:<7}{flag}")
    print(
        f"   planhat writes {p['requests']['planhat_writes']} "
        f"(minimum {p['minimum_requests']['planhat_writes']}); "
        f"failed requests {p['failed_requests'] or 'none'}"
    )
    print(
        f"   hull upserts: users {p['hull_user_upserts']}, accounts {p['hull_account_upserts']} "
        f"(per hull_sync run {p['hull_upserts_by_run']})"
    )
    print(f"   hull store read per hull_sync run: {p['hull_store_read_by_run'] or 'none'}")
    print(f"   delivered {p['delivered'] or 'nothing'}; outcomes {p['delivery_outcomes']}")


# -- the benchmark ---------------------------------------------------------------------------
def add_delivery_history(database: str, copies: int) -> int:
    """``copies`` earlier days of the deliveries the warehouse holds (see ``--history``);
    returns the rows ``planhat.deliveries`` holds after."""
    import duckdb

    conn = duckdb.connect(database)
    try:
        conn.execute(
            "insert into planhat.deliveries select d.* replace ('history-' || k as run_id,"
            " delivered_at - to_days(k::integer) as delivered_at)"
            " from planhat.deliveries d, range(1, ? + 1) days(k)",
            [copies],
        )
        (rows,) = conn.execute("select count(*) from planhat.deliveries").fetchone()
    finally:
        conn.close()
    return int(rows)


def run(
    scale: float,
    change: float,
    seed: int,
    start_date: dt.date | None,
    *,
    cold: bool = False,
    history: int = 0,
    rounds: int = 1,
) -> dict[str, Any]:
    rng = random.Random(f"end_to_end:{seed}")
    with tempfile.TemporaryDirectory(prefix="end_to_end-") as tmp:
        directory = Path(tmp)
        config, overrides = write_config(directory, start_date)
        database = str(directory / "warehouse.duckdb")
        began = time.perf_counter()
        copper = CopperSandbox(seed=seed, scale=scale)
        planhat = PlanhatSandbox(
            seed=seed, scale=scale, seed_user_ids=planhat_user_ids(seed, PLANHAT_TEAM_SIZE)
        )
        planhat.rest.record_bodies = planhat.analytics.record_bodies = False  # payloads: MBs
        with copper, planhat:
            setup_seconds = time.perf_counter() - began
            sizes = {name: copper.count(name) for name in COPPER_OBJECTS}
            print(
                f"sandboxes at scale {scale:g} in {setup_seconds:.1f} s: Copper {sizes}, "
                f"Planhat {planhat_counts(planhat)}; RSS {_rss_mb('VmRSS')} MB"
            )
            print(
                f"configuration: the packaged one with {overrides} (throttles off: Copper "
                f"{COPPER_RATE_PER_MINUTE}/min and Planhat {PLANHAT_RATE_PER_MINUTE}/min are "
                "not waited for); temporary warehouse; a temporary Dagster instance that "
                "every pass shares (as the daemon's); Hull forwarding off"
            )
            home = directory / "dagster_home"
            home.mkdir()
            env = {
                "COPPER_API_URL": copper.base_url,
                "COPPER_API_KEY": copper.api_key,
                "COPPER_USER_EMAIL": copper.user_email,
                **planhat.env(),
                "HULL_PLANHAT_WAREHOUSE": database,
                "HULL_PLANHAT_CONFIG": str(config),
                "DAGSTER_HOME": str(home),
            }
            with environment(env, removed=("HULL_FIREHOSE_URL",)):
                passes = [
                    one_pass("1 full", full=True, copper=copper, planhat=planhat, database=database)
                ]
                if history:
                    began_history = time.perf_counter()
                    rows = add_delivery_history(database, history)
                    print(
                        f"delivery history: {history} earlier days added, {rows:,} rows in"
                        f" planhat.deliveries ({time.perf_counter() - began_history:.1f} s)"
                    )
                for number in range(1, rounds + 1):
                    changed = change_records(copper, change, rng)
                    label = f"{len(passes) + 1} {change * 100:g}% changed"
                    passes.append(
                        one_pass(
                            label if rounds == 1 else f"{label} (round {number} of {rounds})",
                            full=False,
                            copper=copper,
                            planhat=planhat,
                            database=database,
                            changed=changed,
                            since=passes[-1]["started_unix"],
                            cold=cold,
                        )
                    )
                passes.append(
                    one_pass(
                        f"{len(passes) + 1} unchanged",
                        full=False,
                        copper=copper,
                        planhat=planhat,
                        database=database,
                        since=passes[-1]["started_unix"],
                        cold=cold,
                    )
                )
    seconds = sum(p["seconds"] for p in passes)
    requests = {p["pass"]: p["requests"] for p in passes}
    minimum = {p["pass"]: p["minimum_requests"] for p in passes}
    limit_minutes = {
        p["pass"]: round(
            sum(p["requests"]["copper"].values()) / COPPER_RATE_PER_MINUTE
            + sum(
                n
                for kind, n in p["requests"]["planhat"].items()
                if "/analytics" not in kind and "/dimensiondata" not in kind
            )
            / PLANHAT_RATE_PER_MINUTE,
            1,
        )
        for p in passes
    }
    return {
        "benchmark": "end_to_end",
        "records": sum(sizes.values()),
        "records_by_object": sizes,
        "seconds": round(seconds, 2),
        "peak_mb": round(max([process_peak_mb(), *(p["peak_mb"] or 0 for p in passes)]), 1),
        "peak_mb_source": (
            "resident high-water mark of the whole process (both sandboxes, Dagster, DuckDB): "
            "Linux VmHWM reset before each job (jobs' and passes' peaks are their own), else "
            "getrusage ru_maxrss since the start (the reset lowers it too: the maximum is kept)"
        ),
        "requests": requests,
        "minimum_requests": minimum,
        "passes": passes,
        "scale": scale,
        "change": change,
        "history_days": history,
        "seed": seed,
        "configuration": overrides,
        "sandbox_setup_seconds": round(setup_seconds, 2),
        "minutes_at_rate_limit": limit_minutes,
    }


COMPARE = ((10.0, 0.01), (100.0, 0.001))
"""The same 100 changed people on a warehouse ten times larger."""
COMPARE_LIMIT = 1.5
COMPARE_ROUNDS = 5
"""Incremental passes of 100 changed people per scale. On two shared cores one pass's cycle
moves by a third between runs of the same code (one pass each gave x1.53 in time; five rounds
of the same code, half an hour later, x1.15): the comparison is of the medians, and every
round is printed."""


def _median_cycle(cycles: list[dict[str, Any]]) -> dict[str, Any]:
    """The median seconds and memory of ``cycles`` (each a ``cycle_cost``), with every round's."""
    seconds = [c["seconds"] for c in cycles]
    memory = [c["mb_above_baseline"] for c in cycles if c["mb_above_baseline"] is not None]
    return {
        "jobs": sorted({job for c in cycles for job in c["jobs"]}),
        "seconds": round(statistics.median(seconds), 2) if seconds else 0,
        "mb_above_baseline": round(statistics.median(memory), 1) if memory else None,
        "rounds": [{"seconds": c["seconds"], "mb": c["mb_above_baseline"]} for c in cycles],
    }


def compare(seed: int, start_date: dt.date | None, rounds: int = COMPARE_ROUNDS) -> dict[str, Any]:
    """Scale 10 with 1% changed against scale 100 with 0.1% changed: the incremental passes'
    cycle (every job but the Planhat snapshots), time and memory above the pass's baseline,
    the medians of ``rounds`` passes at each scale."""
    runs = [run(scale, change, seed, start_date, rounds=rounds) for scale, change in COMPARE]
    rows = []
    for label, pick in (("100 changed", slice(1, -1)), ("unchanged", slice(-1, None))):
        small, large = (_median_cycle([p["cycle"] for p in r["passes"][pick]]) for r in runs)
        ratio = {
            key: round(large[key] / small[key], 2) if small[key] else None
            for key in ("seconds", "mb_above_baseline")
        }
        rows.append({"pass": label, "scale_10": small, "scale_100": large, "ratio": ratio})
    print()
    problems = []
    for row in rows:
        small, large, ratio = row["scale_10"], row["scale_100"], row["ratio"]
        if not small["jobs"] and not large["jobs"]:
            print(f"{row['pass']:>12}: no run started at either scale")
            continue
        if not small["jobs"]:
            problems.append(f"{row['pass']}: runs at scale 100 where scale 10 started none")
        print(
            f"{row['pass']:>12}: {small['seconds']:.1f} s -> {large['seconds']:.1f} s"
            f" (x{ratio['seconds']}), +{small['mb_above_baseline']} MB ->"
            f" +{large['mb_above_baseline']} MB (x{ratio['mb_above_baseline']})"
            + (" (medians)" if len(small["rounds"]) > 1 else "")
        )
        for scale, side in (("10", small), ("100", large)):
            if len(side["rounds"]) > 1:
                each = ", ".join(f"{r['seconds']:.1f} s +{r['mb']} MB" for r in side["rounds"])
                print(f"{'':>14}scale {scale:>3}, each round: {each}")
    problems += [
        f"{row['pass']} {key} x{value} > x{COMPARE_LIMIT}"
        for row in rows
        for key, value in row["ratio"].items()
        if value is not None and value > COMPARE_LIMIT
    ]
    for r in runs:
        for p in r["passes"]:
            print(
                f"scale {r['scale']:g} pass {p['pass']}: {p['seconds']:.1f} s, peak"
                f" {p['peak_mb']} MB, {p['requests']['total']} requests (minimum"
                f" {p['minimum_requests']['total']}), {p['requests']['planhat_writes']}"
                " Planhat writes"
            )
        last = r["passes"][-1]
        if (
            last["requests"]["planhat_writes"]
            or last["hull_user_upserts"]
            or last["hull_account_upserts"]
        ):
            problems.append(f"the unchanged pass at scale {r['scale']:g} wrote")
        problems += [
            f"scale {r['scale']:g} pass {p['pass']} failed" for p in r["passes"] if not p["ok"]
        ]
        problems += [
            f"scale {r['scale']:g} pass {p['pass']} made {p['requests']['total']} requests"
            f" (minimum {p['minimum_requests']['total']}"
            f"{_cut_pages_note(p)})"
            for p in r["passes"]
            if p["requests"]["total"]
            > p["minimum_requests"]["total"] + sum(p["window_cut_pages"].values())
        ]
    return {
        "benchmark": "end_to_end_compare",
        "comparison": rows,
        "limit": COMPARE_LIMIT,
        "rounds": rounds,
        "runs": [{k: v for k, v in r.items() if k != "passes"} for r in runs],
        "passes": {r["scale"]: r["passes"] for r in runs},
        "ok": not problems,
        "problems": problems,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--compare",
        action="store_true",
        help="scale 10 --change 0.01 against scale 100 --change 0.001 (same 100 people)",
    )
    parser.add_argument("--scale", type=float, default=100.0)
    parser.add_argument("--change", type=float, default=0.01, help="share of people/companies")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cold",
        action="store_true",
        help="evict the warehouse file from the page cache before each incremental pass",
    )
    parser.add_argument(
        "--history",
        type=int,
        default=0,
        help="earlier days of deliveries added after the full pass (copies of its rows)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help=f"incremental passes of --change each (default 1; {COMPARE_ROUNDS} with --compare)",
    )
    parser.add_argument(
        "--start-date",
        type=dt.date.fromisoformat,
        default=None,
        help="copper.start_date (default: the packaged configuration's)",
    )
    args = parser.parse_args(argv)
    if args.scale <= 0:
        parser.error("--scale must be > 0")
    if not 0 <= args.change <= 1:
        parser.error("--change must be within 0..1")
    speed = MachineSpeed()
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.compare:
        compared = compare(args.seed, args.start_date, args.rounds or COMPARE_ROUNDS)
        compared["machine"] = speed.report()
        if compared["problems"]:
            print("FAILED: " + "; ".join(compared["problems"]))
        print(json.dumps(compared, default=str))
        return 0 if compared["ok"] else 1
    if args.history < 0:
        parser.error("--history must be >= 0")
    result = run(
        args.scale,
        args.change,
        args.seed,
        args.start_date,
        cold=args.cold,
        history=args.history,
        rounds=args.rounds or 1,
    )
    last = result["passes"][-1]
    problems = [f"pass {p['pass']} failed" for p in result["passes"] if not p["ok"]]
    if last["requests"]["planhat_writes"]:
        problems.append(f"the unchanged pass wrote {last['requests']['planhat_writes']} times")
    if last["hull_user_upserts"] or last["hull_account_upserts"]:
        problems.append(
            f"the unchanged pass upserted {last['hull_user_upserts']} user and "
            f"{last['hull_account_upserts']} account attributes"
        )
    result["ok"] = not problems
    result["machine"] = speed.report()
    print()
    for p in result["passes"]:
        print(
            f"pass {p['pass']}: {p['seconds']:.1f} s, peak {p['peak_mb']} MB, "
            f"{p['requests']['total']} requests (minimum {p['minimum_requests']['total']}), "
            f"{p['requests']['planhat_writes']} Planhat writes,"
            f" sandboxes' CPU {p['sandbox_cpu_seconds']:.1f} s,"
            f" collector {p['collector']['seconds']:.1f} s"
            f" ({p['collector']['full_passes']} full, {p['collector']['full_seconds']:.1f} s)"
        )
    print(f"total {result['seconds']:.1f} s; process peak {result['peak_mb']} MB")
    if problems:
        print("FAILED: " + "; ".join(problems))
    print(json.dumps(result, default=str))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
