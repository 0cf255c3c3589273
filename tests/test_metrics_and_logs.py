"""Operating the gateway: /metrics after a scripted conversation, and masked logs."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from channels.console import ConsoleChannel
from gateway.logs import MaskingFormatter
from tests.conftest import GatewayFactory
from tests.fakes.llm import FakeLLM


def samples(exposition: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    parsed = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            parsed[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return parsed


async def test_metrics_count_what_happened(
    make_gateway: GatewayFactory, fake_llm: FakeLLM, fake_composio: Any
) -> None:
    console = ConsoleChannel(token="metrics-secret")
    gateway = await make_gateway([console], tools=True)
    entity = (await gateway.identity.resolve("console", "local", "ann")).entity_id
    fake_composio.connect(entity, "asana")
    fake_llm.on("tasks", "ASANA_GET_MULTIPLE_TASKS", {})
    auth = {"Authorization": "Bearer metrics-secret"}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gateway.app), base_url="http://gw"
    ) as client:
        for body in (
            {"user": "ann", "text": "hello", "id": "m1"},
            {"user": "ann", "text": "hello", "id": "m1"},  # a platform retry
            {"user": "ann", "text": "my tasks", "id": "m2"},
        ):
            assert (
                await client.post("/webhooks/console", json=body, headers=auth)
            ).status_code == 200
        forged = await client.post(
            "/webhooks/console", json={"user": "x"}, headers={"Authorization": "Bearer no"}
        )
        assert forged.status_code == 401
        await gateway.wait_idle()
        exposition = (await client.get("/metrics")).text

    got = samples(exposition)
    assert (
        got[("gateway_inbound_updates_total", (("channel", "console"), ("kind", "message")))] == 3
    )
    assert got[("gateway_duplicates_dropped_total", (("channel", "console"),))] == 1
    assert (
        got[
            (
                "gateway_webhooks_rejected_total",
                (("channel", "console"), ("reason", "verification")),
            )
        ]
        == 1
    )
    assert got[("gateway_webhook_ack_seconds_count", (("channel", "console"),))] == 3
    assert got[("gateway_turn_seconds_count", (("outcome", "ok"),))] == 2
    assert got[("gateway_tool_calls_total", (("outcome", "ok"), ("toolkit", "asana")))] == 1
    assert (
        got[("gateway_outbound_messages_total", (("channel", "console"), ("outcome", "sent")))] == 2
    )
    assert got[("gateway_llm_tokens_total", (("type", "prompt"),))] > 0
    assert got[("gateway_inbox_depth", ())] == 0


@pytest.mark.parametrize("json_lines", [False, True])
def test_logs_mask_phone_numbers_tokens_and_links(json_lines: bool) -> None:
    formatter = MaskingFormatter(json_lines=json_lines, unmasked=False)
    secrets = [
        "+1 650-555-1234",
        "16505551234",
        "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw",
        "xoxb-1234567890-abcdefghijklmnop",
        "https://connect.composio.dev/link/lk_9f8e7d6c5b4a",
        "K7MQ-4XZ9",  # a /link code
    ]
    for secret in secrets:
        record = logging.LogRecord("t", logging.INFO, __file__, 1, "value %s here", (secret,), None)
        line = formatter.format(record)
        assert secret not in line, line
        assert "here" in line
    token_in_text = logging.LogRecord(
        "t",
        logging.INFO,
        __file__,
        1,
        "GET /bot123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/getMe",
        (),
        None,
    )
    assert "AAHdq" not in formatter.format(token_in_text)


def test_unmasked_only_when_explicitly_asked_at_debug() -> None:
    from gateway.logs import configure_logging

    configure_logging("info", unmasked=True)
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler.formatter, MaskingFormatter) and not handler.formatter.unmasked
    configure_logging("debug", unmasked=True)
    handler = logging.getLogger().handlers[0]
    assert handler.formatter.unmasked  # type: ignore[union-attr]
    configure_logging("warning")


class _JsonLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(MaskingFormatter(json_lines=True, unmasked=False))
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


async def test_one_envelope_id_follows_each_message_from_webhook_to_send(
    make_gateway: GatewayFactory, fake_llm: FakeLLM
) -> None:
    console = ConsoleChannel(token="log-secret")
    gateway = await make_gateway([console])
    captured = _JsonLines()
    root = logging.getLogger()
    level = root.level
    root.addHandler(captured)
    root.setLevel(logging.INFO)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=gateway.app), base_url="http://gw"
        ) as client:
            for user, text in (("ann", "hello there"), ("bob", "my secret plans")):
                response = await client.post(
                    "/webhooks/console",
                    json={"user": user, "text": text, "id": f"{user}-1"},
                    headers={"Authorization": "Bearer log-secret"},
                )
                assert response.status_code == 200
            await gateway.wait_idle()
    finally:
        root.removeHandler(captured)
        root.setLevel(level)

    stored = [line for line in captured.lines if line["message"].startswith("stored console")]
    ids = {line["envelope_id"] for line in stored}
    assert len(stored) == 2 and len(ids) == 2
    for envelope_id in ids:
        mine = [
            line["message"] for line in captured.lines if line.get("envelope_id") == envelope_id
        ]
        assert any(m.startswith("turn done") for m in mine), mine
        assert any(m.startswith("sent console") for m in mine), mine
        webhook = [line for line in captured.lines if "webhook: 1 stored" in line["message"]]
        assert any(envelope_id in line["message"] for line in webhook)
    assert not any("secret plans" in line["message"] for line in captured.lines)


async def test_a_link_code_and_message_text_never_reach_the_logs(
    make_gateway: GatewayFactory, fake_llm: FakeLLM
) -> None:
    console = ConsoleChannel(token="log-secret")
    gateway = await make_gateway([console])
    captured = _JsonLines()
    root = logging.getLogger()
    level = root.level
    root.addHandler(captured)
    root.setLevel(logging.INFO)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=gateway.app), base_url="http://gw"
        ) as client:
            for n, text in enumerate(["/link", "call me at +1 650 555 0199"]):
                response = await client.post(
                    "/webhooks/console",
                    json={"user": "ann", "text": text, "id": f"ann-{n}"},
                    headers={"Authorization": "Bearer log-secret"},
                )
                assert response.status_code == 200
            await gateway.wait_idle()
    finally:
        root.removeHandler(captured)
        root.setLevel(level)

    code = re.search(r"Your link code is (\S+)", console.sent[0].text)
    assert code is not None, console.sent[0].text
    logged = json.dumps(captured.lines)
    assert captured.lines  # the turns were logged ...
    for secret in (code.group(1), code.group(1).replace("-", ""), "650 555 0199", "call me"):
        assert secret not in logged  # ... without the code, the number or the text
