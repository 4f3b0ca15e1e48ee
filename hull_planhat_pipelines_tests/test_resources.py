"""The resources hand every client of one account the same rate limiter (one window a process)."""

from __future__ import annotations

import pytest

from hull_planhat_pipelines import resources
from hull_planhat_pipelines.clients.http import RateLimiters
from hull_planhat_pipelines.resources import CopperResource, PlanhatResource
from hull_planhat_pipelines.sandbox.copper import CopperSandbox
from hull_planhat_pipelines.sandbox.planhat import PlanhatSandbox
from hull_planhat_pipelines_tests.fake_time import FakeTime
from hull_planhat_pipelines_tests.planhat_support import API_TOKEN, TENANT_TOKEN


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    """The process's limiters on a fake clock: a wait is recorded, never slept."""
    time = FakeTime()
    limiters = RateLimiters(clock=time.monotonic, sleeper=time.sleep)
    monkeypatch.setattr(resources, "PROCESS_LIMITERS", limiters)
    return time


def test_two_copper_clients_of_one_resource_count_against_one_window(
    copper_sandbox: CopperSandbox, fake_time: FakeTime
) -> None:
    copper = CopperResource(
        api_url=copper_sandbox.base_url,
        api_key=copper_sandbox.api_key,
        user_email=copper_sandbox.user_email,
        requests_per_minute=3,
    )
    with copper.client() as first, copper.client() as second:
        assert first.session.limiter is second.session.limiter
        first.newest_modified("leads")
        first.newest_modified("people")
        second.newest_modified("companies")
        assert fake_time.sleeps == []  # three requests: the quota, not over it
        second.newest_modified("opportunities")  # the fourth within the minute waits
        assert fake_time.sleeps == [pytest.approx(60.0)]
        requests = first.stats.requests + second.stats.requests
    assert requests == len(copper_sandbox.server.recorded()) == 4


def test_another_copper_account_has_its_own_window(
    copper_sandbox: CopperSandbox, fake_time: FakeTime
) -> None:
    def resource(user_email: str) -> CopperResource:
        return CopperResource(
            api_url=copper_sandbox.base_url,
            api_key=copper_sandbox.api_key,
            user_email=user_email,
            requests_per_minute=3,
        )

    ours = resource(copper_sandbox.user_email)
    with ours.client() as client, resource("other@example.com").client() as other:
        assert client.session.limiter is not other.session.limiter
    assert ours.client().session.limiter is ours.client().session.limiter


def test_two_planhat_clients_share_the_rest_quota_and_not_the_analytics_host(
    planhat_sandbox_factory: object, fake_time: FakeTime
) -> None:
    sandbox: PlanhatSandbox = planhat_sandbox_factory(  # type: ignore[operator]
        seed=7, scale=0, api_token=API_TOKEN, tenant_token=TENANT_TOKEN
    )
    planhat = PlanhatResource(
        api_url=sandbox.rest_url,
        analytics_url=sandbox.analytics_url,
        api_token=API_TOKEN,
        tenant_token=TENANT_TOKEN,
        requests_per_minute=2,
    )
    with planhat.client() as first, planhat.client() as second:
        assert first.rest.limiter is second.rest.limiter
        assert first.analytics.limiter is None  # the analytics host has no calls-a-minute quota
        first.list_users()
        second.list_users()
        first.bulk_activities([{"email": "a@x.example", "action": "Login"}])
        assert fake_time.sleeps == []
        second.list_users()
        assert fake_time.sleeps == [pytest.approx(60.0)]
