"""The run-failure sensor posts a Slack-compatible message to a webhook, only when one is set."""

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import dagster as dg
import pytest

from hull_planhat_pipelines.orchestration import build_failure_webhook_sensor


class Hook:
    """A local HTTP server standing in for the chat webhook: records each POST's JSON."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.bodies: list[dict[str, Any]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                hook.bodies.append(json.loads(self.rfile.read(length)))
                self.send_response(hook.status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/T0/B0/secret-token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "Hook":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def hook() -> Iterator[Hook]:
    with Hook() as running:
        yield running


@dg.op
def fetch_planhat() -> None:
    raise RuntimeError("Planhat answered 503 three times")


@dg.job(tags={"hull_planhat/trigger": "every 60 minutes"})
def failing_job() -> None:
    fetch_planhat()


def _failure_context(instance: dg.DagsterInstance) -> dg.RunFailureSensorContext:
    result = failing_job.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    return dg.build_run_status_sensor_context(
        sensor_name="run_failure_webhook",
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        dagster_event=result.get_run_failure_event(),
    ).for_run_failure()


def test_a_failed_run_is_posted_to_the_webhook(hook: Hook) -> None:
    sensor = build_failure_webhook_sensor(url=lambda: hook.url)
    with dg.instance_for_test() as instance:
        context = _failure_context(instance)
        sensor(context)  # what the daemon calls for each failed run
    [body] = hook.bodies
    assert set(body) == {"text"}  # Slack's incoming-webhook shape
    assert "failing_job" in body["text"] and "every 60 minutes" in body["text"]
    assert context.dagster_run.run_id[:8] in body["text"]


def test_no_webhook_configured_posts_nothing(hook: Hook) -> None:
    sensor = build_failure_webhook_sensor(url=lambda: None)
    with dg.instance_for_test() as instance:
        skipped = sensor(_failure_context(instance))
    assert isinstance(skipped, dg.SkipReason) and "not set" in (skipped.skip_message or "")
    assert hook.bodies == []


def test_a_refusing_webhook_is_reported_without_its_url() -> None:
    with Hook(status=404) as refusing, dg.instance_for_test() as instance:
        sensor = build_failure_webhook_sensor(url=lambda: refusing.url)
        skipped = sensor(_failure_context(instance))
    assert isinstance(skipped, dg.SkipReason)
    assert "404" in (skipped.skip_message or "") and "secret-token" not in skipped.skip_message
