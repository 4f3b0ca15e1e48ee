"""The ``hull-planhat`` command: sync, sandbox, demo, dev, check-config, internal-api."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import signal
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from hull_planhat_pipelines.collector import collector_spared
from hull_planhat_pipelines.settings import ConfigError, Settings, config_path, load_settings

# -- sync ----------------------------------------------------------------------------------------
EXIT_OK = 0
EXIT_STEP_FAILED = 1
EXIT_USAGE = 2
EXIT_RECORDS_FAILED = 3
EXIT_BUSY = 75  # EX_TEMPFAIL: try again later


@dataclass
class StepSummary:
    step: str
    ok: bool
    rows: int | None = None
    requests: int | None = None
    detail: str = ""
    failed_checks: list[str] = field(default_factory=list)
    """ERROR-severity asset checks of this step that failed (records that did not go through)."""
    samples: dict[str, list[Any]] = field(default_factory=dict)
    """Dry run: a few payloads per target that would have been sent."""


@dataclass
class SyncSummary:
    steps: list[StepSummary] = field(default_factory=list)
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        """Every step ran (records may still have failed: see ``exit_status``)."""
        return bool(self.steps) and all(s.ok for s in self.steps)

    @property
    def exit_status(self) -> int:
        """0 all went through; 3 every step ran but records failed; 1 a step failed."""
        if not self.ok:
            return EXIT_STEP_FAILED
        if any(s.failed_checks for s in self.steps):
            return EXIT_RECORDS_FAILED
        return EXIT_OK

    def samples(self, per_target: int = 3) -> str:
        lines = []
        for step in self.steps:
            for target, bodies in step.samples.items():
                for body in bodies[:per_target]:
                    text = json.dumps(body, default=str, ensure_ascii=False)
                    lines.append(f"  would send to {target}: {text[:300]}")
        return "\n".join(lines)

    def table(self, compact: bool = True) -> str:
        """One line per asset (``compact``: an asset run twice in a cycle, such as Hull after
        Copper and again after Planhat, shows its last rows and its requests summed)."""
        steps = merge_steps(self.steps) if compact else self.steps
        frame = pd.DataFrame(
            [
                {
                    "step": s.step,
                    "status": "FAILED" if not s.ok else ("ERRORS" if s.failed_checks else "ok"),
                    "rows": "" if s.rows is None else s.rows,
                    "requests": "" if s.requests is None else s.requests,
                    "detail": s.detail,
                }
                for s in steps
            ]
        )
        return frame.to_string(index=False)


def merge_steps(steps: Sequence[StepSummary]) -> list[StepSummary]:
    """Steps of the same asset as one: failed if any failed, the last rows, requests summed,
    the failing (else the last) detail."""
    merged: dict[str, StepSummary] = {}
    for step in steps:
        seen = merged.get(step.step)
        if seen is None:
            merged[step.step] = StepSummary(
                **{**step.__dict__, "failed_checks": [*step.failed_checks]}
            )
            continue
        requests = [r for r in (seen.requests, step.requests) if r is not None]
        seen.requests = sum(requests) if requests else None
        seen.rows = step.rows if step.rows is not None else seen.rows
        if seen.ok or not step.ok:
            seen.detail = step.detail
        seen.ok = seen.ok and step.ok
        seen.failed_checks += [c for c in step.failed_checks if c not in seen.failed_checks]
        seen.samples = {**seen.samples, **step.samples}
    return list(merged.values())


@contextlib.contextmanager
def step_progress(name: str, detail: str, stream: Any = None) -> Iterator[None]:
    """``[hh:mm:ss] name (detail) ...`` then the time it took, on a terminal only: the long
    steps (a full Copper fetch) show that they are moving; piped output stays the table."""
    stream = stream or sys.stderr
    if not stream.isatty():
        yield
        return
    started = time.monotonic()
    print(f"[{time.strftime('%H:%M:%S')}] {name} ({detail}) ...", file=stream, flush=True)
    try:
        yield
    finally:
        print(f"  {name}: {time.monotonic() - started:.1f}s", file=stream, flush=True)


def _instance() -> Any:
    import dagster as dg

    return (
        dg.DagsterInstance.get()
        if os.environ.get("DAGSTER_HOME")
        else dg.DagsterInstance.ephemeral()
    )


def _materialized_metadata(result: Any) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        key = "/".join(materialization.asset_key.path)
        found[key] = {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}
    return found


def _run_job(
    defs: Any,
    name: str,
    tags: dict[str, str],
    detail: str,
    ops: dict[str, Any] | None = None,
    *,
    instance: Any = None,
    asset_selection: Sequence[Any] | None = None,
) -> list[StepSummary]:
    """Execute a job of the definitions (or the part of it in ``asset_selection``)."""
    job = defs.resolve_job_def(name)
    # Warnings and errors only (one line per skip reason); counts go to the summary table.
    run_config: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    selected = set(asset_selection or job.asset_layer.executable_asset_keys)
    if ops:
        names = {defs.resolve_assets_def(k).node_def.name for k in selected}
        run_config["ops"] = {op: config for op, config in ops.items() if op in names}
    with step_progress(name, detail):
        result = job.execute_in_process(
            instance=instance or _instance(),
            tags=tags,
            raise_on_error=False,
            run_config=run_config,
            asset_selection=list(asset_selection) if asset_selection else None,
        )
    metadata = _materialized_metadata(result)
    failed_checks = _failed_error_checks(result)
    steps = []
    for key in sorted(k.to_user_string() for k in selected):
        found = metadata.get(key)
        checks = failed_checks.get(key, [])
        text = _detail(found, detail) if found else _failure_reason(result, key)
        if checks:
            text += f"; failed checks: {', '.join(checks)}"
        steps.append(
            StepSummary(
                step=key,
                ok=found is not None,
                rows=_rows(found),
                requests=found.get("run_requests", found.get("requests")) if found else None,
                detail=text,
                failed_checks=checks,
                samples=_samples(found, key),
            )
        )
    return steps


def _rows(found: dict[str, Any] | None) -> int | None:
    if not found:
        return None
    if found.get("dry_run"):
        return found.get("would_send")
    return found.get("run_rows", found.get("rows", found.get("sent")))


def _samples(found: dict[str, Any] | None, key: str) -> dict[str, list[Any]]:
    if not found or not found.get("dry_run"):
        return {}
    if found.get("samples"):
        return dict(found["samples"])
    if found.get("sample_payload"):
        return {key.rsplit("/", 1)[-1].removeprefix("destination_"): found["sample_payload"]}
    return {}


def _failed_error_checks(result: Any) -> dict[str, list[str]]:
    """Asset key -> names of its ERROR-severity checks that failed in this run."""
    import dagster as dg

    failed: dict[str, list[str]] = {}
    for evaluation in result.get_asset_check_evaluations():
        if not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR:
            key = evaluation.asset_key.to_user_string()
            failed.setdefault(key, []).append(evaluation.check_name)
    return failed


def _detail(metadata: dict[str, Any], default: str) -> str:
    """Per-target outcome counts for deliveries (failures first), the fetched window else."""
    if "by_target" in metadata:
        targets = metadata["by_target"] or {}
        text = "; ".join(_counts(t, c) for t, c in targets.items()) or "nothing to send"
        return ("dry run, would send: " if metadata.get("dry_run") else "") + text
    if "by_status" in metadata:
        counts = metadata["by_status"] or {}
        text = _counts("", counts).strip(": ") if counts else "nothing to send"
        return ("dry run, would send: " if metadata.get("dry_run") else "") + text
    if metadata.get("skipped_by_reason"):
        return f"skipped: {metadata['skipped_by_reason']}"
    return default


FAILURE_STATUSES = ("error", "ignored", "unknown", "unconfirmed", "dropped")


def _counts(target: str, counts: dict[str, int]) -> str:
    failed = sum(int(counts.get(s, 0)) for s in FAILURE_STATUSES)
    shown = ", ".join(f"{k} {v}" for k, v in counts.items())
    return f"{target}: {shown}" + (f" ({failed} FAILED)" if failed else "")


def delivery_run_config(defs: Any, *, force: bool, dry_run: bool) -> dict[str, Any]:
    """Run config of the outgoing assets for ``--force`` / ``--dry-run``."""
    ops: dict[str, Any] = {}
    keys = defs.resolve_job_def("profiles_and_delivery").asset_layer.executable_asset_keys
    for key in keys:
        name = "__".join(key.path)
        if name.endswith("_payloads"):
            ops[name] = {"config": {"force": force}}
        elif name == "planhat__deliveries":
            ops[name] = {"config": {"dry_run": dry_run}}
        elif name.startswith("planhat__destination_"):
            # --force re-sends payloads; a forced POST would create duplicates in Planhat.
            ops[name] = {"config": {"dry_run": dry_run}}
    if dry_run and _takes_dry_run(defs, "hull_sync", "hull_profiles"):
        ops["hull_profiles"] = {"config": {"dry_run": True}}  # no firehose writes either
    return ops


def _takes_dry_run(defs: Any, job: str, op: str) -> bool:
    """Whether ``op`` of ``job`` has a ``dry_run`` config field."""
    try:
        node = defs.resolve_job_def(job).graph.node_named(op)
    except Exception:
        return False
    field_ = node.definition.config_field
    fields = getattr(getattr(field_, "config_type", None), "fields", None) or {}
    return "dry_run" in fields


MAX_FOLLOW_RUNS = 4
"""A cycle settles in two follow-up runs (after the sources, after the snapshot of what was
delivered); the bound only stops a loop the asset graph should never make."""


def run_sync(
    *,
    full: bool = False,
    force: bool = False,
    dry_run: bool = False,
    lock_wait: float | None = None,
) -> SyncSummary:
    """Run the pipeline once, in process, as Dagster would: the same definitions and rules.

    The sources are fetched (the Copper range the schedule or the first poll would ask for, and
    a full Planhat snapshot); then, until nothing is out of date, the run the downstream
    sensor would request (``orchestration.plan_followers``): Hull, payloads and delivery in one
    run; after a delivery that created records in Planhat or left outcomes in doubt, a
    snapshot, so what Planhat now holds comes back into Hull, with the destinations; else (only
    updates, or nothing sent) the destinations at once. A second sync over
    unchanged sources writes nothing anywhere.

    The whole cycle holds the warehouse's delivery lock: a second sync (or a Dagster delivery
    step) waits up to ``lock_wait`` seconds, then is refused with ``WarehouseBusy``.
    """
    from hull_planhat_pipelines.definitions import build_definitions
    from hull_planhat_pipelines.orchestration import (
        AFTER_DELIVERY,
        COMMAND_LINE_POLL,
        DRY_RUN_TAG,
        SNAPSHOT_TARGETS,
        TRIGGER_TAG,
        AssetGraph,
        plan_followers,
    )
    from hull_planhat_pipelines.sync.planhat.snapshot_due import snapshot_due
    from hull_planhat_pipelines.warehouse import delivery_lock, snapshot_age, warehouse_path
    from hull_planhat_pipelines.warehouse.poll_cursors import save_poll_cursor, take_poll_cursor

    settings = load_settings()
    defs = build_definitions(settings, progress_bar=sys.stderr.isatty())
    instance = _instance()
    graph = AssetGraph(list(defs.assets or []))  # type: ignore[arg-type]

    def job_assets(name: str) -> set[Any]:
        return set(defs.resolve_job_def(name).asset_layer.executable_asset_keys)

    # Only what this sync materializes counts: start from what the instance already holds.
    cursor = plan_followers(instance, graph, {}, job_assets, wait_for_active=False).cursor
    summary = SyncSummary()
    ops = delivery_run_config(defs, force=force, dry_run=dry_run)
    marks = {DRY_RUN_TAG: "true"} if dry_run else {}
    summary.dry_run = dry_run

    stored = False  # a snapshot in the warehouse that this instance may not have recorded

    def follow() -> Any:
        return plan_followers(
            instance,
            graph,
            cursor,
            job_assets,
            wait_for_active=False,
            follow_dry_runs=True,
            snapshot_stored=stored,
        )

    sync_id = f"cli-sync-{uuid.uuid4().hex[:12]}"
    with collector_spared(), delivery_lock(warehouse_path(), sync_id, wait=lock_wait):
        configuration = hashlib.sha256(settings.model_dump_json().encode()).hexdigest()
        saved = take_poll_cursor(COMMAND_LINE_POLL, configuration)
        steps, copper_cursor = _copper_steps(
            defs, settings, instance, full=full, marks=marks, saved=saved
        )
        summary.steps += steps
        interval = settings.planhat.fetch_interval_minutes
        age = snapshot_age(warehouse_path(), SNAPSHOT_TARGETS)
        due = snapshot_due(age, dt.datetime.now(dt.UTC), interval, full=full)
        if due:
            summary.steps += _run_job(
                defs, "planhat_fetch", marks, f"full snapshot ({due})", instance=instance
            )
        else:
            stored = True
            taken = f"{age.taken_at:%Y-%m-%d %H:%M} UTC" if age.taken_at else "never"
            summary.steps.append(
                StepSummary(
                    "planhat snapshot",
                    ok=True,
                    detail=(
                        f"not due: taken {taken}, every {interval} min, "
                        "nothing created or in doubt since"
                    ),
                )
            )
        for _ in range(MAX_FOLLOW_RUNS):
            plan = follow()
            cursor = plan.cursor
            if plan.empty:
                break
            if plan.assets:
                summary.steps += _run_job(
                    defs,
                    "profiles_and_delivery",
                    {**plan.tags, **marks},
                    "changed records only",
                    ops,
                    instance=instance,
                    asset_selection=sorted(plan.assets, key=lambda k: k.to_user_string()),
                )
            if plan.snapshot:
                summary.steps += _run_job(
                    defs,
                    "planhat_fetch",
                    {TRIGGER_TAG: AFTER_DELIVERY, **marks},
                    "full snapshot (after delivery)",
                    instance=instance,
                )
        if copper_cursor is not None and not dry_run and summary.exit_status == EXIT_OK:
            save_poll_cursor(COMMAND_LINE_POLL, copper_cursor, configuration)
    return summary


def _copper_steps(
    defs: Any,
    settings: Any,
    instance: Any,
    *,
    full: bool,
    marks: dict[str, str],
    saved: str | None,
) -> tuple[list[StepSummary], str | None]:
    """The sync's Copper part and the cursor to keep if the whole cycle goes through.

    With a cursor ``saved`` by the last clean sync: what it says changed, as one run (none when
    nothing did). Without one (or for ``--full``): the fetch from the warehouse's resume points
    (every year while they are unknown), whose run also carries the rest of the chain, as an
    interrupted cycle needs."""
    from hull_planhat_pipelines.orchestration import (
        ASSET_PARTITION_RANGE_END_TAG,
        ASSET_PARTITION_RANGE_START_TAG,
        COPPER_SINCE_TAG,
        copper_fetch_tags,
        copper_keys,
        copper_window_tags,
        cursor_after_catch_up,
        plan_command_line_poll,
    )
    from hull_planhat_pipelines.resources import copper_resource

    now = int(time.time())
    poll = None
    if not full:
        copper = copper_resource(settings.copper.requests_per_minute)
        poll = plan_command_line_poll(settings, copper, saved, now)
    if poll is None:
        today = dt.datetime.fromtimestamp(now, dt.UTC).date()
        tags = copper_fetch_tags(settings, today, full=full)
        first = tags[ASSET_PARTITION_RANGE_START_TAG]
        last = tags[ASSET_PARTITION_RANGE_END_TAG]
        steps = _run_job(
            defs,
            "copper_sync",
            {**tags, **marks},
            f"{first}..{last}" + (" (changed records)" if COPPER_SINCE_TAG in tags else ""),
            instance=instance,
        )
        after = cursor_after_catch_up(settings, now) if all(s.ok for s in steps) else None
        return steps, (after.dumps() if after is not None else None)
    run = poll.run
    if run is None:
        return [StepSummary("copper", ok=True, detail=f"{poll.asked}: no run")], poll.cursor.dumps()
    steps = _run_job(
        defs,
        "copper_sync",
        {**copper_window_tags(run.first_day, run.last_day, run.since, run.until), **marks},
        f"{', '.join(run.objects)} {run.first_day}..{run.last_day} ({poll.asked})",
        instance=instance,
        asset_selection=copper_keys(run.objects),
    )
    return steps, poll.cursor.dumps()


def _failure_reason(result: Any, key: str) -> str:
    """The real cause of a failed step: the innermost error, not Dagster's wrapper."""
    for event in result.all_events:
        if event.is_step_failure and event.step_key and key.replace("/", "__") in event.step_key:
            error = event.step_failure_data.error
            while error is not None and error.cause is not None:
                error = error.cause
            message = (error.message if error else "failed").strip()
            lines = [line for line in message.splitlines() if line.strip()] or ["failed"]
            return lines[0][:300]
    return "not materialized (an upstream step failed)"


REQUIRED_CREDENTIALS = (
    "COPPER_API_KEY",
    "COPPER_USER_EMAIL",
    "PLANHAT_API_TOKEN",
    "PLANHAT_TENANT_TOKEN",
)


def missing_credentials() -> list[str]:
    return [name for name in REQUIRED_CREDENTIALS if not os.environ.get(name)]


def cmd_sync(args: argparse.Namespace) -> int:
    missing = missing_credentials()
    if missing:
        print(
            f"missing credentials: {', '.join(missing)}. Export them (see the README), or "
            "point the pipeline at the sandbox: `hull-planhat sandbox > sandbox.env &` then "
            "`source sandbox.env`.",
            file=sys.stderr,
        )
        return EXIT_USAGE
    from hull_planhat_pipelines.warehouse import WarehouseBusy

    try:
        summary = run_sync(
            full=args.full, force=args.force, dry_run=args.dry_run, lock_wait=args.wait
        )
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except WarehouseBusy as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_BUSY
    print(summary.table())
    if summary.dry_run and summary.samples():
        print("\ndry run: nothing was written to any API. Samples:")
        print(summary.samples())
    status = summary.exit_status
    if status == EXIT_RECORDS_FAILED:
        print("\ncompleted with errors: some records did not reach Planhat (see above)")
    return status


# -- sandbox and demo ------------------------------------------------------------------------
@dataclass
class Sandboxes:
    env: dict[str, str]
    copper: Any
    planhat: Any
    firehose: Any

    def planhat_writes(self) -> int:
        return int(self.planhat.write_count())

    def firehose_messages(self) -> int:
        """Messages the sandbox firehose accepted so far (resends included)."""
        return len(self.firehose.messages)


@contextlib.contextmanager
def sandboxes(seed: int, scale: float) -> Iterator[Sandboxes]:
    """Start the emulated APIs, with the environment that points the pipeline at them.

    Planhat is seeded with the team members whose ids the Copper companies carry as owners;
    the Hull firehose takes what the sync forwards, so the demo shows forwarding too.
    """
    from hull_planhat_pipelines.sandbox.copper import CopperSandbox
    from hull_planhat_pipelines.sandbox.copper_seed import PLANHAT_TEAM_SIZE, planhat_user_ids
    from hull_planhat_pipelines.sandbox.hull import HullFirehoseSandbox
    from hull_planhat_pipelines.sandbox.planhat import PlanhatSandbox

    copper = CopperSandbox(seed=seed, scale=scale)
    planhat = PlanhatSandbox(
        seed=seed, scale=scale, seed_user_ids=planhat_user_ids(seed, PLANHAT_TEAM_SIZE)
    )
    firehose = HullFirehoseSandbox()
    with copper, planhat, firehose:
        env = {
            "COPPER_API_URL": copper.base_url,
            "COPPER_API_KEY": copper.api_key,
            "COPPER_USER_EMAIL": copper.user_email,
            **planhat.env(),
            **firehose.env(),
        }
        yield Sandboxes(env, copper, planhat, firehose)


def warehouse_summary() -> str:
    """Rows per table of the warehouse, for the demo's closing lines."""
    from hull_planhat_pipelines.warehouse import read_only

    with read_only() as conn:
        if conn is None:
            return "(empty)"
        tables = conn.execute(
            "select table_schema, table_name from information_schema.tables "
            "where table_type = 'BASE TABLE' order by 1, 2"
        ).fetchall()
        rows = [
            (
                f"{schema}.{name}",
                conn.execute(f'select count(*) from {schema}."{name}"').fetchone()[0],
            )
            for schema, name in tables
        ]
    return "\n".join(f"  {name:<36} {count:>9,}" for name, count in rows)


def _wait_for_interrupt() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set():
        stop.wait(0.5)


def cmd_sandbox(args: argparse.Namespace) -> int:
    with sandboxes(args.seed, args.scale) as running:
        for name, value in running.env.items():
            print(f"export {name}={value}")
        print(flush=True)
        _wait_for_interrupt()
    return 0


DEMO_MARK = "ops.demo_sandbox"
"""The table that says a warehouse was made by the demo (and may be replaced by the next one)."""


def fresh_demo_warehouse(path: str, seed: int, scale: float) -> str | None:
    """Start the demo on an empty warehouse; returns why it cannot, or None.

    Each demo starts new sandboxes: a warehouse written against an earlier one holds its
    Planhat ids, fingerprints and watermarks, and a sync over it would update records this
    Planhat never had (and find nothing new in Copper). A previous demo's warehouse is replaced;
    any other file is left as it is, and the demo does not run."""
    import shutil
    from pathlib import Path

    import duckdb

    from hull_planhat_pipelines.warehouse import connect, read_only
    from hull_planhat_pipelines.warehouse.connection import table_exists

    if Path(path).exists():
        try:
            with read_only(path) as conn:
                made_by_demo = conn is not None and table_exists(conn, *DEMO_MARK.split("."))
        except duckdb.Error as exc:
            return f"{path} cannot be read ({exc.__class__.__name__}); the demo did not start"
        if not made_by_demo:
            return (
                f"{path} holds a warehouse the demo did not make, and the demo starts from an"
                " empty one: move the file away, or set HULL_PLANHAT_WAREHOUSE to another path"
            )
        Path(path).unlink()
        Path(path + ".wal").unlink(missing_ok=True)
        shutil.rmtree(path + ".tmp", ignore_errors=True)
        print(f"replaced the previous demo's warehouse {path}")
    conn = connect(path)
    try:
        conn.execute(
            f"create schema if not exists ops; create table if not exists {DEMO_MARK}"
            " (started_at timestamptz, seed integer, scale double)"
        )
        conn.execute(
            f"insert into {DEMO_MARK} values (?, ?, ?)", [dt.datetime.now(dt.UTC), seed, scale]
        )
    finally:
        conn.close()
    return None


def cmd_demo(args: argparse.Namespace) -> int:
    """Sandbox, a full sync, then a second sync that shows a settled loop writes nothing."""
    from hull_planhat_pipelines.warehouse import warehouse_path

    refused = fresh_demo_warehouse(warehouse_path(), args.seed, args.scale)
    if refused:
        print(refused, file=sys.stderr)
        return 2
    with sandboxes(args.seed, args.scale) as running:
        os.environ.update(running.env)
        ok = True
        for title, full in (("full sync", True), ("second sync, no source change", False)):
            before = running.planhat_writes()
            forwarded_before = running.firehose_messages()
            started = time.monotonic()
            summary = run_sync(full=full)
            ok = ok and summary.ok
            writes = running.planhat_writes() - before
            forwarded = running.firehose_messages() - forwarded_before
            print(
                f"\n== {title}: {time.monotonic() - started:.1f}s, "
                f"{writes} write requests to Planhat, {forwarded} messages to the Hull firehose =="
            )
            print(summary.table())
        print(f"\nwarehouse {warehouse_path()}:\n{warehouse_summary()}")
    return 0 if ok else 1


def cmd_dev(args: argparse.Namespace) -> int:
    """The sandbox and ``dagster dev`` together, until Ctrl-C stops both."""
    from hull_planhat_pipelines.dev import (
        dagster_dev_command,
        dev_session,
        log_tail,
        start_process_group,
        stop_process_group,
        wait_until_served,
    )

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    url = f"http://{args.host}:{args.port}"
    with sandboxes(args.seed, args.scale) as running, dev_session(os.environ, running.env) as dev:
        print("sandbox APIs (export these to reach them from another shell):")
        for name, value in running.env.items():
            print(f"  export {name}={value}")
        kept = (
            "" if not dev.temporary else " (removed on exit; set HULL_PLANHAT_WAREHOUSE to keep it)"
        )
        print(f"warehouse: {dev.warehouse}{kept}")
        print(f"starting the Dagster UI on {url} ... (Ctrl-C stops everything)", flush=True)
        print(f"Dagster's log: {dev.log}", flush=True)
        process = start_process_group(
            dagster_dev_command(dev.workspace, args.host, args.port),
            dev.env,
            dev.dagster_home,
            dev.log,
        )
        threading.Thread(
            target=wait_until_served,
            args=(url, process, stop, lambda: print(f"Dagster UI ready: {url}", flush=True)),
            daemon=True,
        ).start()
        try:
            while not stop.is_set() and process.poll() is None:
                stop.wait(0.5)
        finally:
            crashed = process.poll() is not None and not stop.is_set()
            code = stop_process_group(process)
            if crashed:
                print(f"dagster dev stopped by itself (status {code}):", file=sys.stderr)
                print(log_tail(dev.log), file=sys.stderr)
    print("stopped: Dagster UI, daemon and sandbox", flush=True)
    return code if crashed else 0


# -- check-config ----------------------------------------------------------------------------
def describe_settings(settings: Settings) -> str:
    c, p = settings.copper, settings.planhat
    lines = [
        f"copper: partitions from {c.start_date}, poll every {c.poll_minutes} min, "
        f"fetch all '{c.fetch_all_cron}', activity re-scan {c.activity_rescan_days} days",
        f"  identity: lead {c.identity.lead.model_dump(exclude_none=True)}, "
        f"person {c.identity.person.model_dump(exclude_none=True)}, "
        f"company {c.identity.company.model_dump(exclude_none=True)}",
        "  attributes: "
        + ", ".join(
            f"{group} {len(getattr(c.attributes, group))}"
            for group in ("lead", "person", "company", "opportunity")
        ),
        f"  opportunity type field: {c.opportunity_type_field}; events: {', '.join(c.activity_types)}",
        f"planhat: fetch every {p.fetch_interval_minutes} min, batch size {p.batch_size}",
        f"  contact segments: {p.contact_segments}; company segments: {p.company_segments}",
        f"  tracking events: {p.tracking_events}; metrics: {[m.dimension_id for m in p.metrics]}",
        f"segments: accounts {list(settings.segments.accounts)}, users {list(settings.segments.users)}",
        f"destinations: {[f'{d.name} ({d.method} {d.path})' for d in settings.destinations]}",
    ]
    return "\n".join(lines)


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.path)
    except ConfigError as exc:
        print(f"invalid configuration: {exc}", file=sys.stderr)
        return 2
    from hull_planhat_pipelines.sync.config_check import sql_problems

    problems = sql_problems(settings)
    for path, message in problems:
        print(
            f"invalid configuration: {args.path or config_path()}: {path}: {message}",
            file=sys.stderr,
        )
    if problems:
        return 2
    print(describe_settings(settings))
    return 0


# -- internal-api ----------------------------------------------------------------------------
def cmd_internal_api(args: argparse.Namespace) -> int:
    from hull_planhat_pipelines.internal_api import run_internal_api

    return run_internal_api(args.host, args.port) or 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="hull-planhat", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)

    sync = commands.add_parser("sync", help="run the whole pipeline once, in process")
    sync.add_argument("--full", action="store_true", help="refetch everything")
    sync.add_argument("--force", action="store_true", help="send every in-segment record")
    sync.add_argument("--dry-run", action="store_true", help="compute payloads, write to no API")
    sync.add_argument(
        "--wait",
        type=float,
        default=None,
        metavar="SECONDS",
        help="how long to wait for another sync holding the warehouse (default 60, or "
        "HULL_PLANHAT_LOCK_WAIT); then exit 75",
    )
    sync.set_defaults(func=cmd_sync)

    for name, func, text in (
        ("sandbox", cmd_sandbox, "serve the emulated APIs until interrupted"),
        ("demo", cmd_demo, "sandbox plus one full sync"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--scale", type=float, default=1.0)
        sub.set_defaults(func=func)

    dev = commands.add_parser("dev", help="the sandbox and the Dagster UI, until Ctrl-C")
    dev.add_argument("--seed", type=int, default=0)
    dev.add_argument("--scale", type=float, default=1.0)
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=3000)
    dev.set_defaults(func=cmd_dev)

    check = commands.add_parser("check-config", help="validate a configuration file")
    check.add_argument("path", nargs="?", default=None)
    check.set_defaults(func=cmd_check_config)

    api = commands.add_parser("internal-api", help="serve the internal users API")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8080)
    api.set_defaults(func=cmd_internal_api)
    return root


def quiet_library_warnings() -> None:
    """Library notices (Dagster marks parameters we use as beta or superseded) are for the
    project's developers, not for the people running the command."""
    for pattern in (r".*is currently in (beta|preview)", r".*is superseded", r".*is deprecated"):
        warnings.filterwarnings("ignore", message=pattern)


def main(argv: Sequence[str] | None = None) -> int:
    quiet_library_warnings()
    args = parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
