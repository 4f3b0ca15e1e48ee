"""A Copper full load, ours against Singer's ``tap-copper`` and Airbyte's Copper source, side by
side on one sandbox.

    python benchmarks/copper_full_load.py [--scale 20] [--seed 0]

Ours: ``copper/people``, ``copper/companies`` and ``copper/opportunities`` materialized over
every partition since ``copper.start_date`` in one run (what a single-run backfill or "fetch
all" does), on a fresh Dagster instance (SQLite, as ``dagster dev`` starts with) and a fresh
warehouse: fetch, framing, one write per asset and the per-partition bookkeeping. Theirs: the
tap reading the same three streams from the same sandbox (its base URL set on its client,
the only change made to it), and Airbyte's source (``airbyte-source-copper``, its
``url_base`` pointed at the sandbox, the only change; in its own environment, see
``AIRBYTE_VENV``). All without a client-side throttle: the benchmark measures the
software, not Copper's 180-requests-a-minute quota. Target: ours at most 3x each.

Prints human lines, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from hull_planhat_pipelines.sandbox.copper import CopperSandbox
from hull_planhat_pipelines.settings import default_config_path

from machine import MachineSpeed

OBJECTS = ("people", "companies", "opportunities")
PAGE_SIZE = 200
TARGET_RATIO = 3.0


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ours(sandbox: CopperSandbox, folder: Path) -> dict[str, Any]:
    """One run over every partition of the three assets, as the command line runs jobs."""
    import dagster as dg

    from hull_planhat_pipelines.definitions import build_definitions
    from hull_planhat_pipelines.orchestration import copper_partitions, range_tags
    from hull_planhat_pipelines.settings import load_settings

    config = yaml.safe_load(default_config_path().read_text())
    config["copper"]["requests_per_minute"] = 1_000_000  # no throttle: measure the software
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    os.environ.update(
        {
            "HULL_PLANHAT_CONFIG": str(folder / "config.yaml"),
            "HULL_PLANHAT_WAREHOUSE": str(folder / "warehouse.duckdb"),
            "COPPER_API_URL": sandbox.base_url,
            "COPPER_API_KEY": sandbox.api_key,
            "COPPER_USER_EMAIL": sandbox.user_email,
        }
    )
    settings = load_settings()
    keys = copper_partitions(settings).get_partition_keys()
    before = len(sandbox.server.recorded())
    began = time.perf_counter()
    (folder / "dagster").mkdir()
    with dg.DagsterInstance.local_temp(str(folder / "dagster")) as instance:
        defs = build_definitions(settings)
        result = defs.resolve_job_def("copper_sync").execute_in_process(
            instance=instance,
            asset_selection=[dg.AssetKey(["copper", name]) for name in OBJECTS],
            tags=range_tags(keys[0], keys[-1]),
            raise_on_error=False,
        )
        seconds = time.perf_counter() - began
        events = len(result.get_asset_materialization_events())
    if not result.success:
        raise SystemExit("our full load failed")
    import duckdb

    with duckdb.connect(str(folder / "warehouse.duckdb"), read_only=True) as conn:
        rows = {
            name: conn.execute(f"select count(distinct id) from copper.{name}").fetchone()[0]
            for name in OBJECTS
        }
    return {
        "seconds": round(seconds, 2),
        "records": rows,
        "partitions": len(keys),
        "materialization_events": events,
        "requests": len(sandbox.server.recorded()) - before,
    }


def theirs(sandbox: CopperSandbox) -> dict[str, Any]:
    """The tap's streams, read in full from the same sandbox."""
    from tap_copper.client import Client
    from tap_copper.discover import discover
    from tap_copper.streams import STREAMS

    config = {
        "api_key": sandbox.api_key,
        "user_email": sandbox.user_email,
        "start_date": "2000-01-01T00:00:00Z",
        "page_size": PAGE_SIZE,
        "base_url": sandbox.base_url,  # discovery's authorization checks ask the sandbox too
    }
    before = len(sandbox.server.recorded())
    began = time.perf_counter()
    catalog = discover(config)
    records: dict[str, int] = {}
    with Client(config) as client:
        client.base_url = sandbox.base_url
        for name in OBJECTS:
            stream = STREAMS[name](client, catalog.get_stream(name))
            records[name] = len({r["id"] for r in stream.get_records()})
    return {
        "seconds": round(time.perf_counter() - began, 2),
        "records": records,
        "requests": len(sandbox.server.recorded()) - before,
    }


AIRBYTE_SOURCE = "airbyte-source-copper==0.3.16"
AIRBYTE_VENV = Path(__file__).resolve().parent / ".airbyte-venv"
"""Airbyte's source pins ``airbyte-cdk==0.80.0`` and Python <3.12, and that CDK fails to import
on Python 3.11 (a dataclass with a mutable default): it runs in its own environment, on the
first Python 3.10 or 3.9 found (``AIRBYTE_PYTHON`` names another), built once and kept."""
AIRBYTE_RUNNER = """
import json, logging, pathlib, sys, time
import yaml
import source_copper
from airbyte_cdk.models import ConfiguredAirbyteCatalog
from airbyte_cdk.sources.declarative.manifest_declarative_source import ManifestDeclarativeSource

base, key, email, *names = sys.argv[1:]
manifest = yaml.safe_load((pathlib.Path(source_copper.__file__).parent / "manifest.yaml").read_text())
manifest["definitions"]["base_requester"]["url_base"] = base.rstrip("/") + "/"  # the one change
source = ManifestDeclarativeSource(source_config=manifest)
config = {"api_key": key, "user_email": email}
began = time.perf_counter()
streams = [s for s in source.discover(logging.getLogger("airbyte"), config).streams if s.name in names]
catalog = ConfiguredAirbyteCatalog.parse_obj({"streams": [
    {"stream": json.loads(s.json()), "sync_mode": "full_refresh", "destination_sync_mode": "overwrite"}
    for s in streams]})
ids = {name: set() for name in names}
for message in source.read(logging.getLogger("airbyte"), config, catalog, None):
    if message.type.value == "RECORD":
        ids[message.record.stream].add(message.record.data.get("id"))
print(json.dumps({"seconds": round(time.perf_counter() - began, 2),
                  "records": {name: len(found) for name, found in ids.items()}}))
"""


def _runs(python: str) -> bool:
    return subprocess.run([python, "-c", "pass"], capture_output=True).returncode == 0


def _airbyte_python() -> str | None:
    """``AIRBYTE_PYTHON``, else a working ``python3.10``/``python3.9`` on the path, else one
    that pyenv installed (its shims answer only for the versions selected)."""
    named = os.environ.get("AIRBYTE_PYTHON")
    if named:
        return named
    found = [p for p in map(shutil.which, ("python3.10", "python3.9")) if p]
    if shutil.which("pyenv"):
        root = subprocess.run(["pyenv", "root"], capture_output=True, text=True).stdout.strip()
        for version in ("3.10", "3.9"):
            found += sorted(str(p) for p in Path(root, "versions").glob(f"{version}.*/bin/python"))
    return next((p for p in found if _runs(p)), None)


def airbyte(sandbox: CopperSandbox) -> dict[str, Any] | None:
    """Airbyte's Copper source reading the same streams (its ``url_base`` pointed at the
    sandbox, nothing else changed); None when no Python it runs on is found."""
    python = AIRBYTE_VENV / "bin" / "python"
    if not python.exists():
        base = _airbyte_python()
        if base is None:
            print("Airbyte's source skipped: no Python 3.10 or 3.9 (set AIRBYTE_PYTHON)")
            return None
        subprocess.run([base, "-m", "venv", str(AIRBYTE_VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", AIRBYTE_SOURCE, "pyyaml"], check=True
        )
    before = len(sandbox.server.recorded())
    answer = subprocess.run(
        [str(python), "-c", AIRBYTE_RUNNER, sandbox.base_url, sandbox.api_key,
         sandbox.user_email, *OBJECTS],
        capture_output=True, text=True, check=True, timeout=1800,
    )  # fmt: skip
    found = json.loads(answer.stdout.strip().splitlines()[-1])
    return {**found, "requests": len(sandbox.server.recorded()) - before}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    speed = MachineSpeed()
    with (
        CopperSandbox(seed=args.seed, scale=args.scale) as sandbox,
        tempfile.TemporaryDirectory(prefix="copper-full-load-") as tmp,
    ):
        counts = {name: sandbox.count(name) for name in OBJECTS}
        print(f"sandbox scale {args.scale}: {counts}", flush=True)
        tap = theirs(sandbox)
        print(f"tap-copper: {tap['records']} in {tap['seconds']} s", flush=True)
        source = airbyte(sandbox)
        if source is not None:
            print(f"Airbyte's source: {source['records']} in {source['seconds']} s", flush=True)
        mine = ours(sandbox, Path(tmp))
        print(
            f"ours: {mine['records']} in {mine['seconds']} s, {mine['partitions']} partitions, "
            f"{mine['materialization_events']} materialization events",
            flush=True,
        )
    ratio = mine["seconds"] / tap["seconds"] if tap["seconds"] else math.inf
    airbyte_ratio = mine["seconds"] / source["seconds"] if source and source["seconds"] else None
    minimum = sum(math.floor(n / PAGE_SIZE) + 1 for n in counts.values())
    complete = mine["records"] == counts
    print(f"ratio ours/tap-copper: {ratio:.1f}x (target at most {TARGET_RATIO}x)")
    if airbyte_ratio is not None:
        print(f"ratio ours/Airbyte's source: {airbyte_ratio:.1f}x (target at most {TARGET_RATIO}x)")
    print(
        json.dumps(
            {
                "benchmark": "copper_full_load",
                "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "scale": args.scale,
                "records": sum(counts.values()),
                "seconds": mine["seconds"],
                "peak_mb": round(_peak_mb(), 1),
                "requests": {
                    "ours": mine["requests"],
                    "tap_copper": tap["requests"],
                    "airbyte_source_copper": source["requests"] if source else None,
                },
                "minimum_requests": minimum,
                "ours": mine,
                "tap_copper": tap,
                "airbyte_source_copper": source,
                "ratio": round(ratio, 2),
                "machine": speed.report(),
                "airbyte_ratio": round(airbyte_ratio, 2) if airbyte_ratio is not None else None,
                "target_ratio": TARGET_RATIO,
                "complete": complete,
            }
        )
    )
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
