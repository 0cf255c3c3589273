"""Signed webhook requests as each platform sends them, and how to point a gateway at fakes.

One `Target` per channel: the settings that enable it in a gateway subprocess (its
credentials and the URL of the local fake of its outbound API, which receives the
replies), and a builder of the i-th signed request. Adding a platform is one class here
and one line in `TARGETS`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


@dataclass
class Request:
    path: str
    body: bytes
    headers: dict[str, str]


def _fixture(platform: str, name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / platform / f"{name}.json").read_text())


class Target:
    name: str

    @contextlib.contextmanager
    def fake(self) -> Iterator[dict[str, str]]:
        """Serve the platform's fake API; yields the gateway settings that enable the channel."""
        yield {}

    def request(self, i: int, user: int, run: str) -> Request:
        raise NotImplementedError


class Console(Target):
    name = "console"
    token = "bench-console-token"

    @contextlib.contextmanager
    def fake(self) -> Iterator[dict[str, str]]:
        yield {"console_token": self.token}

    def request(self, i: int, user: int, run: str) -> Request:
        body = json.dumps({"user": f"u{user}", "text": f"hello {i}", "id": f"{run}-{i}"})
        return Request(
            "/webhooks/console",
            body.encode(),
            {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )


class WhatsApp(Target):
    """Meta signs the raw body: `X-Hub-Signature-256: sha256=<hex HMAC with the app secret>`."""

    name = "whatsapp"
    app_secret = "bench-app-secret"

    def __init__(self) -> None:
        self.template = _fixture("whatsapp", "text")
        value = self.template["entry"][0]["changes"][0]["value"]
        self.phone_number_id = value["metadata"]["phone_number_id"]

    @contextlib.contextmanager
    def fake(self) -> Iterator[dict[str, str]]:
        from tests.fakes.graph_api import FakeGraphAPI
        from tests.fakes.server import serve

        graph = FakeGraphAPI(token="bench-wa-token", phone_number_id=self.phone_number_id)
        with serve(graph.app) as server:
            yield {
                "whatsapp_phone_number_id": self.phone_number_id,
                "whatsapp_token": graph.token,
                "whatsapp_app_secret": self.app_secret,
                "whatsapp_verify_token": "bench-verify-token",
                "whatsapp_graph_url": server.url,
            }

    def request(self, i: int, user: int, run: str) -> Request:
        payload = copy.deepcopy(self.template)
        value = payload["entry"][0]["changes"][0]["value"]
        phone, bsuid = f"1650{5550000 + user}", f"US.{run}{user:08d}"
        value["contacts"][0].update(wa_id=phone, user_id=bsuid, profile={"name": f"User {user}"})
        message = value["messages"][0]
        message.update(
            {
                "from": phone,
                "from_user_id": bsuid,
                "id": f"wamid.{run}.{i}",
                "timestamp": str(int(time.time())),
                "text": {"body": f"hello {i}"},
            }
        )
        body = json.dumps(payload).encode()
        digest = hmac.new(self.app_secret.encode(), body, hashlib.sha256).hexdigest()
        return Request(
            "/webhooks/whatsapp",
            body,
            {"Content-Type": "application/json", "X-Hub-Signature-256": f"sha256={digest}"},
        )


class Telegram(Target):
    """Telegram sends the secret given to setWebhook in `X-Telegram-Bot-Api-Secret-Token`."""

    name = "telegram"
    secret = "bench-webhook-secret_1"

    def __init__(self) -> None:
        self.template = _fixture("telegram", "private_text")

    @contextlib.contextmanager
    def fake(self) -> Iterator[dict[str, str]]:
        from tests.fakes.bot_api import FakeBotAPI
        from tests.fakes.server import serve

        bot = FakeBotAPI()
        try:
            with serve(bot.app) as server:
                yield {
                    "telegram_bot_token": bot.token,
                    "telegram_webhook_secret": self.secret,
                    "telegram_mode": "webhook",
                    "telegram_api_url": server.url,
                }
        finally:
            bot.close()

    def request(self, i: int, user: int, run: str) -> Request:
        payload = copy.deepcopy(self.template)
        payload["update_id"] = 100_000_000 + i
        message = payload["message"]
        person = 500_000_000 + user
        message["message_id"] = i + 1
        message["date"] = int(time.time())
        message["text"] = f"hello {i}"
        message["from"].update(id=person, username=f"user{user}", first_name=f"User{user}")
        message["chat"].update(id=person, username=f"user{user}", first_name=f"User{user}")
        return Request(
            "/webhooks/telegram",
            json.dumps(payload).encode(),
            {"Content-Type": "application/json", "X-Telegram-Bot-Api-Secret-Token": self.secret},
        )


class Slack(Target):
    """Slack v0 signing: HMAC-SHA256 of `v0:{timestamp}:{body}` with the signing secret."""

    name = "slack"

    def __init__(self) -> None:
        self.template = _fixture("slack", "message_im")

    @contextlib.contextmanager
    def fake(self) -> Iterator[dict[str, str]]:
        from tests.fakes.server import serve
        from tests.fakes.slack_api import SIGNING_SECRET, FakeSlack

        slack = FakeSlack()
        self.signing_secret = SIGNING_SECRET
        with serve(slack.app) as server:
            slack.base_url = server.url
            yield {
                "slack_bot_token": slack.bot_token,
                "slack_signing_secret": SIGNING_SECRET,
                "slack_mode": "http",
                "slack_api_url": f"{server.url}/api/",
            }

    def request(self, i: int, user: int, run: str) -> Request:
        payload = copy.deepcopy(self.template)
        now = int(time.time())
        ts = f"{now}.{i:06d}"
        event = payload["event"]
        event.update(
            client_msg_id=f"{run}-{i}",
            text=f"hello {i}",
            user=f"U{user:07d}",
            channel=f"D{user:07d}",
            ts=ts,
            event_ts=ts,
        )
        event.pop("blocks", None)
        payload.update(event_id=f"Ev{run}{i}", event_time=now)
        body = json.dumps(payload).encode()
        stamp = str(now)
        base = b"v0:" + stamp.encode() + b":" + body
        signature = "v0=" + hmac.new(self.signing_secret.encode(), base, hashlib.sha256).hexdigest()
        return Request(
            "/webhooks/slack",
            body,
            {
                "Content-Type": "application/json",
                "X-Slack-Request-Timestamp": stamp,
                "X-Slack-Signature": signature,
            },
        )


TARGETS: list[type[Target]] = [Console, WhatsApp, Telegram, Slack]
