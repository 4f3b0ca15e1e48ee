"""Deliver N one-record creates (``POST /conversations``) to the in-process Planhat sandbox, with
the warehouse journal the destination assets use, once per journal mode.

    python benchmarks/destination_journal.py [--records 1000] [--every 50] [--seed 0]

Modes, each on a fresh warehouse and sandbox: ``per-request`` (an intent transaction, then an
outcome transaction per record: the journal before grouping), ``grouped-1`` (one transaction a
record: outcomes with the next intent), ``grouped-K`` (``--every`` records a transaction) and
``paced-K`` (as the destination assets journal: at least ``--every`` records a transaction, and
about a second of sending when the quota (off here) and Planhat let more out).
Prints human lines, then one JSON object as the last line. Exits non-zero unless every mode
made exactly one POST a record, the sandbox holds each conversation once, and every record's
latest delivery row says ``created``. The client throttle is off.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from hull_planhat_pipelines.clients.delivery import configured_target, deliver
from hull_planhat_pipelines.clients.planhat import PlanhatClient
from hull_planhat_pipelines.sandbox.planhat import PlanhatSandbox
from hull_planhat_pipelines.settings import DestinationSettings
from hull_planhat_pipelines.sync.planhat.destinations import destination_records
from hull_planhat_pipelines.warehouse import deliveries

from machine import MachineSpeed


def destination() -> DestinationSettings:
    return DestinationSettings(
        name="conversations",
        method="POST",
        path="/conversations",
        source_sql="select * from notes",
    )


def notes(count: int, company_id: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "event_id": [f"bench-{i:07d}" for i in range(count)],
            "type": "note",
            "subject": [f"Benchmark note {i}" for i in range(count)],
            "description": "benchmark",
            "companyId": company_id,
        }
    )


@contextlib.contextmanager
def counted_transactions() -> Iterator[list[int]]:
    """Counts ``commit_checkpoint`` calls (each one warehouse transaction)."""
    calls: list[int] = []
    real = deliveries.commit_checkpoint

    def counting(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        real(*args, **kwargs)

    deliveries.commit_checkpoint = counting  # type: ignore[assignment]
    try:
        yield calls
    finally:
        deliveries.commit_checkpoint = real  # type: ignore[assignment]


def one_mode(mode: str, count: int, every: int, seed: int) -> dict[str, Any]:
    sandbox = PlanhatSandbox(seed=seed, scale=0).start()
    sandbox.rest.record_bodies = False
    settings = destination()
    target = configured_target(settings.name, settings.method, settings.path)
    try:
        with tempfile.TemporaryDirectory() as folder:
            database = str(Path(folder) / "warehouse.duckdb")
            company = str(sandbox.companies()[0]["_id"])
            records, _ = destination_records(notes(count, company), settings, None)
            records = records.reset_index(drop=True)
            with (
                PlanhatClient(
                    sandbox.rest_url,
                    sandbox.analytics_url,
                    sandbox.api_token,
                    sandbox.tenant_token,
                    requests_per_minute=None,
                ) as client,
                counted_transactions() as transactions,
            ):
                began = time.perf_counter()
                if mode == "per-request":
                    intent = deliveries.make_intent(database, records, "bench")
                    checkpoint = deliveries.make_checkpoint(database, records, "bench")
                    result = deliver(
                        records,
                        target,
                        client,
                        batch_size=1,
                        key_column="key",
                        checkpoint=checkpoint,
                        intent=intent,
                    )
                else:
                    group = 1 if mode == "grouped-1" else every
                    paced = deliveries.JOURNAL_GROUP_SECONDS if mode == "paced-K" else None
                    with deliveries.journal(
                        database,
                        "conversations",
                        records,
                        "bench",
                        every=group,
                        group_seconds=paced,
                    ) as kept:
                        result = deliver(
                            records,
                            target,
                            client,
                            batch_size=1,
                            key_column="key",
                            checkpoint=kept.checkpoint,
                            intent=kept.intent,
                        )
                seconds = time.perf_counter() - began
                by_kind = client.requests_by_kind()
            with duckdb.connect(database, read_only=True) as conn:
                statuses = deliveries.latest_statuses(conn, "conversations")
        posts = len(sandbox.rest.recorded("POST", "^/conversations$"))
        held = sandbox.records("conversations")
    finally:
        sandbox.stop()
    distinct = len({c.get("externalId") for c in held})
    ok = (
        posts == count
        and len(held) == distinct == count
        and len(statuses) == count
        and set(statuses.values()) <= {"created"}
        and result.counts() == ({"created": count} if count else {})
    )
    line = {
        "mode": mode.replace("-K", f"-{every}"),
        "seconds": round(seconds, 3),
        "records_per_second": round(count / seconds, 1) if seconds else None,
        "transactions": len(transactions),
        "requests": by_kind,
        "server_posts": posts,
        "held": len(held),
        "ok": ok,
    }
    print(
        f"{line['mode']}: {count} creates in {seconds:.2f} s, {len(transactions)} warehouse "
        f"transactions, {posts} POSTs, {'ok' if ok else 'FAILED'}"
    )
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--every", type=int, default=destination().journal_every)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.records < 0 or args.every < 1:
        parser.error("--records must be >= 0 and --every >= 1")
    speed = MachineSpeed()
    modes = [
        one_mode(m, args.records, args.every, args.seed)
        for m in ("per-request", "grouped-1", "grouped-K", "paced-K")
    ]
    ok = all(m["ok"] for m in modes)
    result = {
        "benchmark": "destination_journal",
        "records": args.records,
        "every": args.every,
        "modes": modes,
        "speedup": round(modes[0]["seconds"] / modes[2]["seconds"], 1)
        if modes[2]["seconds"]
        else None,
        "ok": ok,
        "machine": speed.report(),
    }
    print(json.dumps(result))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
