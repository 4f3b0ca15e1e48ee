"""Alerts to a chat webhook (Slack's incoming-webhook JSON, which Mattermost, Teams' Slack
connector and others accept): one POST of ``{"text": ...}``. No Dagster here."""

import requests

WEBHOOK_ENV_VAR = "HULL_PLANHAT_ALERT_WEBHOOK_URL"
TIMEOUT_SECONDS = 10.0


class WebhookError(RuntimeError):
    """The webhook refused or could not be reached. Its URL is never part of the message:
    a Slack webhook URL is a credential."""


def post_alert(url: str, text: str, *, session: requests.Session | None = None) -> None:
    """POST one Slack-compatible message; raise :class:`WebhookError` unless it is accepted."""
    sender = session or requests.Session()
    try:
        response = sender.post(url, json={"text": text}, timeout=TIMEOUT_SECONDS)
    except requests.RequestException as exc:
        raise WebhookError(f"alert webhook unreachable: {type(exc).__name__}") from None
    finally:
        if session is None:
            sender.close()
    if response.status_code >= 300:
        raise WebhookError(f"alert webhook answered HTTP {response.status_code}")
