"""Fetch N Copper leads (and the metadata) from the in-process sandbox and frame them.

    python benchmarks/copper_fetch.py [--leads 100000] [--seed 0]

Prints human lines, then one JSON object as the last line. Exits non-zero unless every lead
arrived exactly once in exactly the requests a walk that never skips needs (``minimum_requests``):
the metadata GETs and the user pages, and the searches of the value-cursor walk. Each search
starts at the last ``date_modified`` seen, so it re-reads the records of that second (Copper
filters inclusively and breaks no ties by id); a tie group over a page is walked by
``date_created``. ``offset_minimum_requests`` is what paging by number would take (full pages
of 200 and the short page that proves the end, plus restarts past the 100,000 cap); it skips
records whenever Copper changes during the walk. ``cursor_extra_requests`` is the difference:
the price of never skipping, about one request per 200 pages plus one per large tie group.
The client throttle is off: the benchmark measures the client, not Copper's 180-a-minute quota
(``copper_minutes_at_rate_limit`` says what that quota would add).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import sys
import time
from collections import Counter
from typing import Any

from hull_planhat_pipelines.clients import copper as copper_client
from hull_planhat_pipelines.clients.copper import (
    MAX_PAGE_SIZE,
    CopperClient,
    cursor_walk_searches,
    metadata_requests,
    value_cursor_searches,
)
from hull_planhat_pipelines.sandbox.copper import CopperSandbox
from hull_planhat_pipelines.sync.copper.records import records_frame

from machine import MachineSpeed

RATE_LIMIT_PER_MINUTE = 180


def start_sandbox(leads: int, seed: int) -> CopperSandbox:
    """A sandbox whose data set is exactly ``leads`` leads: generated rows at scale n/1000
    (the seed makes 1000 leads per unit of scale, at least 10)."""
    sandbox = CopperSandbox(seed=seed, scale=max(leads, 10) / 1000).start()
    if sandbox.count("leads") != leads:
        sandbox.set_records("leads", sandbox.records("leads")[:leads])
    if sandbox.count("leads") != leads:
        raise SystemExit(f"sandbox holds {sandbox.count('leads')} leads, not {leads}")
    return sandbox


def _kind(label: str) -> str:
    return label.split("/", 1)[0]


def run(leads: int, seed: int) -> dict[str, Any]:
    started = time.perf_counter()
    sandbox = start_sandbox(leads, seed)
    setup_seconds = time.perf_counter() - started
    print(f"sandbox: {leads} leads, {sandbox.count('users')} users ({setup_seconds:.2f} s)")
    try:
        with CopperClient(
            sandbox.base_url, sandbox.api_key, sandbox.user_email, requests_per_minute=None
        ) as client:
            began = time.perf_counter()
            metadata = client.metadata()
            records = [
                r for page in client.search("leads", start=None, end=None) for r in page.records
            ]
            fetched = time.perf_counter()
            frame = records_frame(
                "leads",
                records,
                metadata,
                fetched_at=dt.datetime.now(dt.UTC),
                partition_start=dt.date(2024, 1, 1),
            )
            framed = time.perf_counter()
            by_kind: Counter[str] = Counter()
            for label, count in client.stats.by_kind.items():
                by_kind[_kind(label)] += count
            served = len(sandbox.server.recorded())
            users = sandbox.count("users")
    finally:
        sandbox.stop()
    dates = sorted(r["date_modified"] for r in records)
    keys = sorted((r["date_modified"], r["date_created"]) for r in records)
    minimum = {"search": value_cursor_searches(keys), "metadata": metadata_requests(users)}
    minimum["total"] = minimum["search"] + minimum["metadata"]
    offset = {
        "search": cursor_walk_searches(dates, MAX_PAGE_SIZE, copper_client.SEARCH_RESULT_CAP),
        "metadata": metadata_requests(users),
    }
    offset["total"] = offset["search"] + offset["metadata"]
    requests = {"search": by_kind["search"], "metadata": by_kind["metadata"]}
    requests["total"] = sum(requests.values())
    seconds = framed - began
    unique = len({r["id"] for r in records})
    print(f"fetched {len(records)} records ({unique} distinct) in {fetched - began:.2f} s")
    print(f"framed {len(frame)} rows in {framed - fetched:.2f} s")
    print(f"requests {requests} (server saw {served}); minimum {minimum}")
    return {
        "benchmark": "copper_fetch",
        "records": len(records),
        "distinct_records": unique,
        "rows": len(frame),
        "seconds": round(seconds, 3),
        "fetch_seconds": round(fetched - began, 3),
        "frame_seconds": round(framed - fetched, 3),
        "sandbox_setup_seconds": round(setup_seconds, 3),
        "records_per_second": round(len(records) / seconds, 1) if seconds else None,
        "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_mb_source": "getrusage ru_maxrss: the whole process (sandbox, client and frame)",
        "requests": requests,
        "minimum_requests": minimum,
        "offset_minimum_requests": offset,
        "cursor_extra_requests": minimum["total"] - offset["total"],
        "server_requests": served,
        "retries": client.stats.retries,
        "copper_minutes_at_rate_limit": round(requests["total"] / RATE_LIMIT_PER_MINUTE, 1),
        "leads": leads,
        "users": users,
        "seed": seed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.leads < 0:
        parser.error("--leads must be >= 0")
    speed = MachineSpeed()
    result = run(args.leads, args.seed)
    result["machine"] = speed.report()
    ok = (
        result["requests"] == result["minimum_requests"]
        and result["records"] == result["distinct_records"] == result["rows"] == args.leads
        and result["server_requests"] == result["requests"]["total"]
    )
    result["ok"] = ok
    if not ok:
        print("FAILED: not every lead exactly once in the minimum number of requests")
    print(json.dumps(result))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
