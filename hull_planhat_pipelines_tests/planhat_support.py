"""Shared pieces of the Planhat client and delivery tests: fake time, sandbox, client."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator

import pandas as pd
import pytest

from hull_planhat_pipelines.clients.http import RetryPolicy
from hull_planhat_pipelines.clients.planhat import PlanhatClient
from hull_planhat_pipelines.sandbox.planhat import PlanhatSandbox
from hull_planhat_pipelines.sync.planhat.fingerprints import (
    FINGERPRINT_COLUMNS,
    fresh_fingerprints,
    normalize_fingerprints,
)
from hull_planhat_pipelines_tests.fake_time import FakeTime

API_TOKEN = "ph-test-token-0123456789abcdef0123456789abcdef"
TENANT_TOKEN = "tenant-4f0c2a9e-b1d7-4c55-9a0e-6d2f1e7c3b8a"
FAST = RetryPolicy(attempts=4, backoff_factor=0.5, backoff_max=8.0)

SandboxFactory = Callable[..., PlanhatSandbox]


def make_client(
    sandbox: PlanhatSandbox,
    time: FakeTime,
    *,
    api_token: str = API_TOKEN,
    tenant_token: str = TENANT_TOKEN,
    requests_per_minute: int | None = None,
) -> PlanhatClient:
    return PlanhatClient(
        sandbox.rest_url,
        sandbox.analytics_url,
        api_token,
        tenant_token,
        requests_per_minute=requests_per_minute,
        policy=FAST,
        sleeper=time.sleep,
        clock=time.monotonic,
    )


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def tenant(planhat_sandbox_factory: SandboxFactory, fake_time: FakeTime) -> SandboxFactory:
    """Start a small tenant (1 company, no endusers, 3 team members) on the fake clock."""

    def start(**kw: object) -> PlanhatSandbox:
        options = {"seed": 7, "scale": 0, "api_token": API_TOKEN, "tenant_token": TENANT_TOKEN}
        return planhat_sandbox_factory(**{**options, **kw}, clock=fake_time.utc)

    return start


@pytest.fixture
def sandbox(tenant: SandboxFactory) -> PlanhatSandbox:
    return tenant()


@pytest.fixture
def client(sandbox: PlanhatSandbox, fake_time: FakeTime) -> Iterator[PlanhatClient]:
    with make_client(sandbox, fake_time) as planhat:
        yield planhat


def companies(count: int, prefix: str = "ACC") -> list[dict]:
    return [{"name": f"Company {i}", "externalId": f"{prefix}-{i}"} for i in range(count)]


def advance_fingerprints(
    fingerprints: pd.DataFrame | None,
    outcomes: pd.DataFrame,
    payloads: pd.DataFrame,
    now: dt.datetime,
) -> pd.DataFrame:
    """The fingerprints table after a delivery of ``payloads`` that produced ``outcomes``, in
    memory: what the warehouse's checkpoint does (upsert by ``(target, key)`` of the rows
    ``fresh_fingerprints`` earns), so payload tests can run a second delivery without a
    warehouse. A record not delivered keeps its old row and is retried next run."""
    table = normalize_fingerprints(fingerprints)
    fresh = fresh_fingerprints(outcomes, payloads, now)[FINGERPRINT_COLUMNS]
    if fresh.empty:
        return table
    stale = table.merge(fresh[["target", "key"]], on=["target", "key"], how="left", indicator=True)
    kept = table.loc[(stale["_merge"] == "left_only").to_numpy()]
    parts = [part for part in (kept, fresh) if not part.empty]
    out = pd.concat(parts, ignore_index=True)
    out["delivered_at"] = pd.to_datetime(out["delivered_at"], utc=True)
    return out.sort_values(["target", "key"], kind="stable").reset_index(drop=True)
