"""Hull's official Node client (npm ``hull``, pinned in ``node/package.json``) against the
sandbox firehose, and ours compared with it message for message.

The sandbox was once built on the same wrong guesses as our client, so tests of one against the
other proved nothing; the official client is the reference both must agree with. It is installed
by ``npm ci`` in ``node/`` (CI does it); without it these tests skip locally and fail in CI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from hull_planhat_pipelines.clients.hull import HullFirehoseClient
from hull_planhat_pipelines.sandbox.hull import FirehoseRecord, HullFirehoseSandbox

NODE_DIR = Path(__file__).parents[1] / "node"
SCRIPT = NODE_DIR / "send_four.js"
USER = {"email": "ada@example.com", "external_id": "copper-person:7"}
ACCOUNT = {"domain": "acme.com", "anonymous_id": "copper-company:34"}
USER_TRAITS = {"copper_person/title": "CTO", "copper_person/score": 7, "copper_person/vip": True}
ACCOUNT_TRAITS = {"copper_company/name": "Acme", "copper_company/tags": ["a", "b"]}
EVENT = {
    "name": "Email sent",
    "properties": {"subject": "Hi"},
    "context": {
        "event_id": "copper-activity:9",
        "created_at": "2023-11-14T21:13:20.000Z",
        "source": "copper",
    },
}


def _node() -> str:
    """The node binary, once the official client is installed; else skip (fail in CI)."""
    node = shutil.which("node")
    if node is None or not (NODE_DIR / "node_modules" / "hull").is_dir():
        reason = (
            "Hull's official client is not installed: run `npm ci --ignore-scripts` in "
            f"{NODE_DIR.relative_to(NODE_DIR.parents[1])}/"
        )
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return node


def send_with_official_client(sandbox: HullFirehoseSandbox) -> list[str]:
    spec = {
        "connector_id": sandbox.connector_id,
        "connector_secret": sandbox.connector_secret,
        "organization": sandbox.organization,
        "firehose_url": sandbox.base_url,
        "user": USER,
        "account": ACCOUNT,
        "user_traits": USER_TRAITS,
        "account_traits": ACCOUNT_TRAITS,
        "event": EVENT,
    }
    done = subprocess.run(
        [_node(), str(SCRIPT), json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def send_with_our_client(sandbox: HullFirehoseSandbox) -> None:
    context = EVENT["context"]
    with HullFirehoseClient(
        sandbox.base_url, sandbox.organization, sandbox.connector_id, sandbox.connector_secret
    ) as client:
        messages = [
            client.user_traits_message(USER, USER_TRAITS),
            client.account_traits_message(ACCOUNT, ACCOUNT_TRAITS),
            client.link_message(USER, ACCOUNT),
            client.track_message(
                USER,
                context["event_id"],
                EVENT["name"],
                EVENT["properties"],
                context["created_at"],
                source=context["source"],
            ),
        ]
        assert all(o.delivered for o in client.send(messages))


def comparable(record: FirehoseRecord) -> dict[str, Any]:
    """What a message says; its arrival time and batch number differ from one send to another."""
    return {
        "type": record.type,
        "subject_type": record.subject_type,
        "user": record.user,
        "account": record.account,
        "sub": record.sub,
        "body": record.body,
    }


def test_the_official_client_is_accepted_by_the_sandbox(
    hull_firehose: HullFirehoseSandbox,
) -> None:
    assert send_with_official_client(hull_firehose) == ["ok"] * 4
    assert hull_firehose.refusals == []
    assert hull_firehose.batches == 1
    assert hull_firehose.traits_for_user(USER) == USER_TRAITS
    assert hull_firehose.traits_for_account(ACCOUNT) == ACCOUNT_TRAITS
    assert hull_firehose.links() == [(USER, ACCOUNT)]
    [event] = hull_firehose.events(USER)
    assert event.body["event"] == "Email sent"
    assert event.body["created_at"] == EVENT["context"]["created_at"]
    [request] = hull_firehose.envelopes
    assert request.headers["hull-app-id"] == hull_firehose.connector_id


def test_our_client_sends_what_the_official_client_sends(
    hull_firehose: HullFirehoseSandbox,
) -> None:
    send_with_official_client(hull_firehose)
    official = [comparable(m) for m in hull_firehose.messages]
    official_headers = {
        k: v for k, v in hull_firehose.envelopes[0].headers.items() if k.startswith("hull-")
    }
    hull_firehose.reset()

    send_with_our_client(hull_firehose)
    ours = [comparable(m) for m in hull_firehose.messages]
    assert len(official) == 4
    assert ours == official
    our_headers = {
        k: v for k, v in hull_firehose.envelopes[0].headers.items() if k.startswith("hull-")
    }
    assert our_headers == official_headers
    assert set(hull_firehose.envelopes[0].body) == {"batch", "timestamp", "sentAt"}
