"""Benchmark: Hull profile sync (map -> resolve -> diff -> apply) at a million profiles.

    python benchmarks/hull_diff.py [--users 1000000 --accounts 100000 --changed 10000]

Phases, each timed (compute = map + resolve + diff; apply = next store):
1. first_load: every Copper record into an empty store (users/2 people, users/2 + users/20
   leads of which users/20 share a person's email, so exactly ``users`` profiles; ``accounts``
   companies, as many opportunities and activities).
2. incremental: ``changed`` changed or new records (people, leads, companies, opportunities,
   activities) against the store of phase 1.
3. full_refresh: the same changes, but every current row passed (what a "fetch all" does),
   opportunities complete (deleted-opportunity clears computed).
The incremental phase runs as the asset does: the store of phase 1 is written to a DuckDB
warehouse file, and a fresh process (so that phase 1's memory is not counted) reads only the
slice of the store the changed records touch and merges the changed profiles back in place
(``warehouse/hull_store``), inside one transaction. ``--in-memory`` measures the pure core over a
store held in pandas instead (what the asset did before).
``--against REF`` measures a change: the incremental phase of the working tree and of the git
revision ``REF`` (checked out in a temporary worktree), alternately ``--rounds`` times each, on
fresh copies of one warehouse, and prints the medians of wall and CPU seconds and their ratios.
Run side by side, the two see the same machine: a shared machine's speed drifts between runs
far more than most changes move the figure (single runs of the same code differ by 15%).
``--warehouse PATH`` keeps the store of phase 1 in ``PATH`` and reuses it when it exists
(phase 1 is then not run: it takes a minute and a half at a million profiles).
The incremental phase also reports its CPU seconds (every thread: on a shared machine its wall
time includes waiting for the cores). Peak memory is the process's resident high-water mark during the phase (Linux ``VmHWM`` reset
through ``/proc/self/clear_refs`` before it, so the inputs built beforehand count as resident
but their construction does not; elsewhere ``ru_maxrss``, the peak since process start). The
last line is one JSON object; the headline numbers are the incremental phase's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from hull_planhat_pipelines.settings import Settings, default_config_path, load_settings
from hull_planhat_pipelines.sync.hull.apply import apply_changes
from hull_planhat_pipelines.sync.hull.changes import (
    Changes,
    ProfileStore,
    compute_changes,
)
from hull_planhat_pipelines.sync.hull.from_copper import CopperRows

from machine import MachineSpeed

NOW = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)
BASE = int(dt.datetime(2024, 3, 1, tzinfo=dt.UTC).timestamp())


# -- memory ----------------------------------------------------------------------------------
def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_mb() -> float:
    try:
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_seconds() -> float:
    """CPU time of the process, every thread (on a shared machine, wall time also counts the
    time other processes held the cores)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- synthetic Copper rows -------------------------------------------------------------------
class Scale:
    def __init__(self, users: int, accounts: int, changed: int) -> None:
        self.people = users // 2
        self.shared = users // 20
        self.leads = users - self.people + self.shared
        self.accounts = accounts
        self.changed = changed
        # each kind of change touches a share of the changed records
        self.people_changed = changed * 40 // 100
        self.leads_changed = changed * 20 // 100
        self.leads_new = changed * 10 // 100
        self.companies_changed = changed * 10 // 100
        self.opportunities_changed = changed * 10 // 100
        self.activities_new = changed - sum(
            (
                self.people_changed,
                self.leads_changed,
                self.leads_new,
                self.companies_changed,
                self.opportunities_changed,
            )
        )

    def every(self, total: int, count: int) -> int:
        """The stride that picks ``count`` of ``total`` rows."""
        return max(1, total // max(1, count))


def _copper_sql(scale: Scale, version: int, only_changed: bool) -> dict[str, str]:
    """One SELECT per object; ``version`` 1 carries the changes, ``only_changed`` keeps only the
    changed or new rows (an incremental batch)."""
    s, v = scale, version

    def pick(total: int, count: int) -> str:
        return f"(i % {s.every(total, count)} = 0 and i / {s.every(total, count)} < {count})"

    people_changed = pick(s.people, s.people_changed)
    leads_changed = pick(s.leads, s.leads_changed)
    companies_changed = pick(s.accounts, s.companies_changed)
    opps_changed = pick(s.accounts, s.opportunities_changed)
    leads_total = s.leads + (s.leads_new if v else 0)
    acts_total = s.accounts + (s.activities_new if v else 0)

    def changed(flag: str) -> str:
        return f"({v} = 1 and {flag})"

    def where(flag: str) -> str:
        return f"where {flag}" if only_changed else ""

    people = f"""
        select i + 1 as id, {BASE} + i as m, i % {s.accounts} + 1 as company_id,
          json_object('id', i + 1, 'name', 'Person ' || i, 'primary_email', 'p' || i || '@example.com',
            'title', case when {changed(people_changed)} then 'Chief ' || i else 'Engineer' end,
            'contact_type', 'Customer', 'phone', '+1 555 ' || i,
            'custom:Plan', ['Free', 'Pro', 'Enterprise'][i % 3 + 1],
            'custom:User ID', case when i % 2 = 0 then 'U' || i end,
            'company_id', i % {s.accounts} + 1, 'leads_converted_from', []::integer[])::varchar
            as fields
        from range({s.people}) t(i) {where(changed(people_changed))}"""
    leads = f"""
        select i + 1 as id, {BASE} + i as m, null::bigint as company_id,
          json_object('id', i + 1, 'name', 'Lead ' || i,
            'primary_email', case when i < {s.shared} then 'p' || i else 'l' || i end
              || '@example.com',
            'status', case when {changed(leads_changed)} then 'Qualified' else 'New' end,
            'customer_source', ['Web', 'Event', null][i % 3 + 1],
            'custom:Lead Score', i % 100)::varchar as fields
        from range({leads_total}) t(i)
        {where(f"{changed(leads_changed)} or i >= {s.leads}")}"""
    companies = f"""
        select i + 1 as id, {BASE} + i as m, null::bigint as company_id,
          json_object('id', i + 1, 'name', 'Company ' || i,
            'email_domain', 'c' || i || '.example.com', 'contact_type', 'Customer',
            'custom:Account ID', 'ACC' || i, 'custom:assignee_planhat_id', 'ph' || (i % 50),
            'custom:ARR', json_object('amount',
               case when {changed(companies_changed)} then 2000.5 else 1000.0 end,
               'currency', 'USD'))::varchar as fields
        from range({s.accounts}) t(i) {where(changed(companies_changed))}"""
    opportunities = f"""
        select i + 1 as id, {BASE} + i as m, i % {s.accounts} + 1 as company_id,
          (i * 7) % {s.people} + 1 as primary_contact_id,
          ['New Business', 'Upsell', 'Renewal', ''][i % 4 + 1] as opportunity_type,
          json_object('id', i + 1, 'name', 'Deal ' || i, 'monetary_value', 100.0 * (i % 50),
            'status', 'Open', 'pipeline_stage',
            case when {changed(opps_changed)} then 'Negotiation' else 'Qualified' end,
            'close_date', '2024-12-31')::varchar as fields
        from range({s.accounts}) t(i) {where(changed(opps_changed))}"""
    activities = f"""
        select i + 1 as id, ['person', 'lead', 'company'][i % 3 + 1] as parent_type,
          (i * 13) % {s.people} + 1 as parent_id, i % 2 as type_id,
          case when i % 5 = 0 then 'system' else 'user' end as type_category,
          ['Note', 'Phone Call', 'Meeting', 'Email'][i % 4 + 1] as type_name,
          to_timestamp({BASE} + i) as activity_date,
          json_object('id', i + 1, 'details', 'Talked ' || i, 'user_id', i % 20)::varchar
            as fields
        from range({acts_total}) t(i) {where(f"i >= {s.accounts}")}"""
    return {
        "people": people,
        "leads": leads,
        "companies": companies,
        "opportunities": opportunities,
        "activities": activities,
    }


def copper_rows(scale: Scale, version: int, only_changed: bool) -> CopperRows:
    con = duckdb.connect()
    frames: dict[str, pd.DataFrame] = {}
    for name, sql in _copper_sql(scale, version, only_changed).items():
        if name == "activities":
            frames[name] = con.execute(sql).df()
            continue
        frame = (
            con.execute(f"select *, to_timestamp(m) as date_modified from ({sql})")
            .df()
            .drop(columns=["m"])
        )
        frames[name] = frame
    con.close()
    return CopperRows(**frames, opportunities_complete=not only_changed)


def record_count(rows: CopperRows) -> int:
    return sum(
        len(frame)
        for frame in (rows.leads, rows.people, rows.companies, rows.opportunities, rows.activities)
        if frame is not None
    )


# -- phases ----------------------------------------------------------------------------------
def measure(
    label: str, settings: Settings, store: ProfileStore, rows: CopperRows, log: Callable[..., None]
) -> tuple[ProfileStore, dict[str, Any]]:
    exact = _reset_peak()
    started = time.perf_counter()
    changes: Changes = compute_changes(settings, store, rows)
    computed = time.perf_counter()
    after = apply_changes(store, changes, NOW)
    applied = time.perf_counter()
    result = {
        "records": record_count(rows),
        "seconds": round(applied - started, 2),
        "compute_seconds": round(computed - started, 2),
        "apply_seconds": round(applied - computed, 2),
        "peak_mb": round(_peak_mb(), 1),
        "peak_exact": exact,
        "user_upserts": len(changes.user_upserts),
        "account_upserts": len(changes.account_upserts),
        "claims": len(changes.user_claims) + len(changes.account_claims),
        "links": len(changes.links),
        "events": len(changes.events),
        "users": len(after.users),
        "accounts": len(after.accounts),
    }
    log(
        f"{label:>13}: {result['records']:>9,} records  {result['seconds']:>7.2f} s"
        f" (compute {result['compute_seconds']:.2f}, apply {result['apply_seconds']:.2f})"
        f"  peak {result['peak_mb']:>8.1f} MB  upserts {result['user_upserts']:,} users /"
        f" {result['account_upserts']:,} accounts, {result['events']:,} events;"
        f" store {result['users']:,} users / {result['accounts']:,} accounts"
    )
    return after, result


def write_warehouse(path: str, settings: Settings, store: ProfileStore) -> None:
    """The store as the asset keeps it: ``hull.users`` / ``hull.accounts`` with segments,
    ``hull.events``."""
    from hull_planhat_pipelines.sync.hull.segments import evaluate_segments
    from hull_planhat_pipelines.warehouse import hull_store

    users, accounts = evaluate_segments(store.users, store.accounts, settings.segments)
    conn = duckdb.connect(path)
    try:
        conn.execute("create schema if not exists hull; create schema if not exists ops")
        hull_store.replace_table(conn, "hull.users", users)
        hull_store.replace_table(conn, "hull.accounts", accounts)
        hull_store.replace_table(conn, "hull.events", store.events)
    finally:
        conn.close()


def incremental_in_warehouse(path: str, scale: Scale, log: Callable[..., None]) -> dict[str, Any]:
    """The incremental phase against the warehouse file: slice read, compute, merge."""
    from hull_planhat_pipelines.warehouse import hull_store

    settings = load_settings(default_config_path())
    rows = copper_rows(scale, 1, only_changed=True)
    conn = duckdb.connect(path)
    gc.collect()
    exact = _reset_peak()
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    reader = hull_store.SliceReader(conn)
    changes: Changes = compute_changes(settings, reader, rows, now=NOW)
    computed = time.perf_counter()
    conn.execute("begin transaction")
    hull_store.write_changes(
        conn,
        settings.segments,
        reader.store,
        changes,
        NOW,
        everything=False,
        held_segments=reader.segments,
    )
    conn.execute("commit")
    applied, cpu = time.perf_counter(), _cpu_seconds() - cpu_started
    users = conn.execute("select count(*) from hull.users").fetchall()[0][0]
    accounts = conn.execute("select count(*) from hull.accounts").fetchall()[0][0]
    conn.close()
    result = {
        "records": record_count(rows),
        "seconds": round(applied - started, 2),
        "compute_seconds": round(computed - started, 2),
        "apply_seconds": round(applied - computed, 2),
        "cpu_seconds": round(cpu, 2),
        "peak_mb": round(_peak_mb(), 1),
        "peak_exact": exact,
        "slice_users": len(reader.store.users),
        "slice_accounts": len(reader.store.accounts),
        "user_upserts": len(changes.user_upserts),
        "account_upserts": len(changes.account_upserts),
        "claims": len(changes.user_claims) + len(changes.account_claims),
        "links": len(changes.links),
        "events": len(changes.events),
        "users": int(users),
        "accounts": int(accounts),
    }
    log(
        f"{'incremental':>13}: {result['records']:>9,} records  {result['seconds']:>7.2f} s"
        f" (compute {result['compute_seconds']:.2f}, merge {result['apply_seconds']:.2f};"
        f" CPU {result['cpu_seconds']:.2f})  peak {result['peak_mb']:>8.1f} MB  slice {result['slice_users']:,} users /"
        f" {result['slice_accounts']:,} accounts; upserts {result['user_upserts']:,} users /"
        f" {result['account_upserts']:,} accounts, {result['events']:,} events;"
        f" store {result['users']:,} users / {result['accounts']:,} accounts"
    )
    return result


def _incremental_child(
    script: str, warehouse: str, args: argparse.Namespace, root: str | None = None
) -> dict[str, Any]:
    """The incremental phase of ``script`` in a fresh process, on a copy of ``warehouse``;
    ``root``: import the package from that checkout instead of the installed one."""
    with tempfile.TemporaryDirectory(prefix="hull_diff-") as tmp:
        path = str(Path(tmp) / "warehouse.duckdb")
        shutil.copyfile(warehouse, path)
        argv = [
            *("--users", str(args.users), "--accounts", str(args.accounts)),
            *("--changed", str(args.changed), "--incremental-from", path),
        ]
        if root is None:
            command = [sys.executable, script, *argv]
        else:  # the installed package is found before PYTHONPATH: this checkout's goes first
            command = [sys.executable, "-c", _FROM_CHECKOUT, root, script, *argv]
        child = subprocess.run(command, capture_output=True, text=True)
    if child.returncode:
        print(child.stdout, child.stderr, file=sys.stderr)
        raise SystemExit(child.returncode)
    lines = child.stdout.strip().splitlines()
    return {**json.loads(lines[-1]), "said": lines[:-1]}


_FROM_CHECKOUT = """
import importlib.machinery, runpy, sys
root, script = sys.argv[1], sys.argv[2]
class _Checkout:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "hull_planhat_pipelines":
            return importlib.machinery.PathFinder.find_spec(name, [root])
        return None
sys.meta_path.insert(0, _Checkout)
sys.path.insert(0, str(__import__("pathlib").Path(script).parent))
sys.argv = [script, *sys.argv[3:]]
runpy.run_path(script, run_name="__main__")
"""


def against(ref: str, warehouse: str, args: argparse.Namespace, log: Callable[..., None]) -> dict:
    """The incremental phase of the working tree and of ``ref``, alternately."""
    repository = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="hull_diff-ref-") as tmp:
        checkout = str(Path(tmp) / "checkout")
        subprocess.run(
            ["git", "-C", str(repository), "worktree", "add", "--detach", checkout, ref],
            check=True,
            capture_output=True,
        )
        try:
            runs: dict[str, list[dict[str, Any]]] = {"ours": [], ref: []}
            for round_ in range(args.rounds):
                for side in ("ours", ref):
                    if side == "ours":
                        result = _incremental_child(__file__, warehouse, args)
                    else:
                        script = str(Path(checkout) / "benchmarks" / "hull_diff.py")
                        result = _incremental_child(script, warehouse, args, root=checkout)
                    result.pop("said", None)
                    runs[side].append(result)
                    log(
                        f"round {round_ + 1} {side:>10}: {result['seconds']:.2f} s"
                        f" (compute {result['compute_seconds']:.2f},"
                        f" merge {result['apply_seconds']:.2f}), peak {result['peak_mb']:.1f} MB"
                    )
        finally:
            subprocess.run(
                ["git", "-C", str(repository), "worktree", "remove", "--force", checkout],
                capture_output=True,
            )
    medians = {
        side: {
            key: round(statistics.median(r[key] for r in results), 3)
            for key in ("seconds", "compute_seconds", "apply_seconds", "cpu_seconds", "peak_mb")
        }
        for side, results in runs.items()
    }
    ratio = round(medians["ours"]["seconds"] / medians[ref]["seconds"], 3)
    cpu_ratio = round(medians["ours"]["cpu_seconds"] / medians[ref]["cpu_seconds"], 3)
    log(
        f"median of {args.rounds}: ours {medians['ours']['seconds']:.2f} s,"
        f" {ref} {medians[ref]['seconds']:.2f} s: x{ratio}; CPU ours"
        f" {medians['ours']['cpu_seconds']:.2f} s, {ref} {medians[ref]['cpu_seconds']:.2f} s:"
        f" x{cpu_ratio} (steadier than wall time on a shared machine)"
    )
    return {
        "ref": ref,
        "rounds": args.rounds,
        "medians": medians,
        "ratio": ratio,
        "cpu_ratio": cpu_ratio,
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--changed", type=int, default=10_000)
    parser.add_argument("--skip-full-refresh", action="store_true")
    parser.add_argument(
        "--in-memory", action="store_true", help="the pure core over a store held in pandas"
    )
    parser.add_argument("--incremental-from", help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--warehouse", help="keep the store of phase 1 here; reused if present")
    parser.add_argument("--against", metavar="REF", help="a git revision to compare with")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each side (--against)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    settings = load_settings(default_config_path())  # the example configuration
    scale = Scale(args.users, args.accounts, args.changed)

    def log(message: str) -> None:
        print(message, flush=True)

    if args.incremental_from:
        print(json.dumps(incremental_in_warehouse(args.incremental_from, scale, log)))
        return 0

    if args.against and args.in_memory:
        parser.error("--against compares the warehouse phase: drop --in-memory")
    speed = MachineSpeed(log)
    reused = bool(args.warehouse) and Path(args.warehouse).exists()
    phases: dict[str, Any] = {}
    store: ProfileStore | None = None
    if reused:
        log(f"phase 1 not run: the store of {args.warehouse} is reused")
    else:
        started = time.perf_counter()
        first_rows = copper_rows(scale, 0, only_changed=False)
        log(f"built first-load rows in {time.perf_counter() - started:.1f} s")
        store, phases["first_load"] = measure(
            "first_load", settings, ProfileStore(), first_rows, log
        )
        del first_rows

    with tempfile.TemporaryDirectory(prefix="hull_diff-") as tmp:
        if args.in_memory:
            assert store is not None, "--in-memory builds its store: drop --warehouse"
            incremental_rows = copper_rows(scale, 1, only_changed=True)
            _, incremental = measure("incremental", settings, store, incremental_rows, log)
            del incremental_rows
        else:
            path = args.warehouse or str(Path(tmp) / "warehouse.duckdb")
            if store is not None:
                began = time.perf_counter()
                write_warehouse(path, settings, store)
                log(f"wrote the store to a warehouse in {time.perf_counter() - began:.1f} s")
            if args.against:
                phases["against"] = against(args.against, path, args, log)
                ours = sorted(phases["against"]["runs"]["ours"], key=lambda r: r["seconds"])
                incremental = ours[len(ours) // 2]
            else:
                incremental = _incremental_child(__file__, path, args)
                for line in incremental["said"]:
                    log(line)
    incremental.pop("said", None)
    phases["incremental"] = incremental

    if not args.skip_full_refresh and store is not None:
        full_rows = copper_rows(scale, 1, only_changed=False)
        _, phases["full_refresh"] = measure("full_refresh", settings, store, full_rows, log)

    if store is not None:
        store_users, store_accounts = len(store.users), len(store.accounts)
    else:
        with duckdb.connect(path, read_only=True) as conn:
            store_users, store_accounts = conn.execute(
                "select (select count(*) from hull.users), (select count(*) from hull.accounts)"
            ).fetchone()  # type: ignore[misc]
    print(
        json.dumps(
            {
                "benchmark": "hull_diff",
                "records": incremental["records"],
                "seconds": incremental["seconds"],
                "peak_mb": incremental["peak_mb"],
                "requests": 0,
                "minimum_requests": 0,
                "store_users": store_users,
                "store_accounts": store_accounts,
                "phases": phases,
                "machine": speed.report(),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
