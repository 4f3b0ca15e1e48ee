"""Deliver N company payloads to the in-process Planhat sandbox through ``deliver``.

    python benchmarks/planhat_delivery.py [--records 100000] [--no-update-pass] [--seed 0]

Pass 1 creates N companies; pass 2 (unless ``--no-update-pass``) sends every one again with a
changed field, so all are updates. Prints human lines, then one JSON object as the last line.
Exits non-zero unless each pass took exactly ceil(N / 5000) bulk requests (the server saw the
same number) and every record came back created, then updated. The client throttle is off:
the benchmark measures the client, not Planhat's 200-a-minute quota (``planhat_minutes_at_rate
_limit`` says what that quota would add).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Any

import pandas as pd

from hull_planhat_pipelines.clients.delivery import DeliveryResult, deliver
from hull_planhat_pipelines.clients.planhat import PlanhatClient
from hull_planhat_pipelines.clients.planhat_targets import COMPANIES
from hull_planhat_pipelines.sandbox.planhat import PlanhatSandbox
from hull_planhat_pipelines.settings import MAX_BULK_RECORDS
from hull_planhat_pipelines.sync.batching import batch_count

from machine import MachineSpeed

RATE_LIMIT_PER_MINUTE = 200


def company_records(count: int, revision: int) -> pd.DataFrame:
    """Payload rows as ``planhat/company_payloads`` holds them: key plus a payload dict."""
    keys = [f"BENCH-{i:07d}" for i in range(count)]
    payloads = [
        {
            "externalId": key,
            "name": f"Benchmark Company {i}",
            "domains": [f"bench-{i}.example.com"],
            "status": "customer",
            "custom": {"ARR": (i % 977) * 100 + revision, "Revision": revision},
        }
        for i, key in enumerate(keys)
    ]
    return pd.DataFrame({"external_id": keys, "payload": payloads})


def peak_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024, 1)


def one_pass(client: PlanhatClient, records: pd.DataFrame) -> tuple[DeliveryResult, float]:
    began = time.perf_counter()
    result = deliver(
        records,
        COMPANIES,
        client,
        batch_size=MAX_BULK_RECORDS,
        key_column="external_id",
    )
    return result, time.perf_counter() - began


def run(records: int, update_pass: bool, seed: int) -> dict[str, Any]:
    started = time.perf_counter()
    sandbox = PlanhatSandbox(seed=seed, scale=0).start()
    sandbox.rest.record_bodies = False  # the request log would hold every payload twice
    setup_seconds = time.perf_counter() - started
    passes: list[dict[str, Any]] = []
    try:
        with PlanhatClient(
            sandbox.rest_url,
            sandbox.analytics_url,
            sandbox.api_token,
            sandbox.tenant_token,
            requests_per_minute=None,
        ) as client:
            for revision in range(1, 3 if update_pass else 2):
                frame = company_records(records, revision)
                result, seconds = one_pass(client, frame)
                passes.append(
                    {
                        "pass": revision,
                        "seconds": round(seconds, 3),
                        "records_per_second": round(records / seconds, 1) if seconds else None,
                        "requests": result.requests,
                        "attempts": result.attempts,
                        "outcomes": result.counts(),
                    }
                )
                print(
                    f"pass {revision}: {records} records in {seconds:.2f} s, "
                    f"{result.requests} requests, outcomes {result.counts()}"
                )
            by_kind = client.requests_by_kind()
        served = len(sandbox.rest.recorded("PUT", "^/companies$"))
        stored = len(sandbox.companies())
    finally:
        sandbox.stop()
    minimum = batch_count(records, MAX_BULK_RECORDS) * len(passes)
    seconds = sum(p["seconds"] for p in passes)
    total = records * len(passes)
    print(f"requests {by_kind} (server saw {served} bulk PUTs); minimum {minimum}")
    print(f"sandbox holds {stored} companies (1 seeded)")
    return {
        "benchmark": "planhat_delivery",
        "records": records,
        "seconds": round(seconds, 3),
        "records_per_second": round(total / seconds, 1) if seconds else None,
        "peak_mb": peak_mb(),
        "peak_mb_source": "getrusage ru_maxrss: the whole process (sandbox store, client, frames)",
        "requests": by_kind,
        "minimum_requests": minimum,
        "server_requests": served,
        "created": passes[0]["outcomes"].get("created", 0),
        "updated": passes[1]["outcomes"].get("updated", 0) if update_pass else None,
        "passes": passes,
        "sandbox_setup_seconds": round(setup_seconds, 3),
        "planhat_minutes_at_rate_limit": round(minimum / RATE_LIMIT_PER_MINUTE, 2),
        "stored_companies": stored,
        "seed": seed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--no-update-pass", dest="update_pass", action="store_false")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.records < 0:
        parser.error("--records must be >= 0")
    speed = MachineSpeed()
    result = run(args.records, args.update_pass, args.seed)
    result["machine"] = speed.report()
    sent = sum(result["requests"].values())
    expected = [{"created": args.records}] + (
        [{"updated": args.records}] if args.update_pass else []
    )
    if args.records == 0:
        expected = [{} for _ in expected]
    ok = (
        sent == result["minimum_requests"] == result["server_requests"]
        and [p["outcomes"] for p in result["passes"]] == expected
    )
    result["ok"] = ok
    if not ok:
        print("FAILED: not every record delivered once in the minimum number of requests")
    print(json.dumps(result))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
