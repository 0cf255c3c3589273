"""Prometheus metrics of one gateway process, in its own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_TURN_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.inbound = Counter(
            "gateway_inbound_updates",
            "Envelopes received, by channel and kind.",
            ["channel", "kind"],
            registry=registry,
        )
        self.duplicates = Counter(
            "gateway_duplicates_dropped",
            "Envelopes dropped as duplicates (platform retries).",
            ["channel"],
            registry=registry,
        )
        self.rejected = Counter(
            "gateway_webhooks_rejected",
            "Webhook requests refused, by reason.",
            ["channel", "reason"],
            registry=registry,
        )
        self.webhooks_in_flight = Gauge(
            "gateway_webhooks_in_flight",
            "Webhook requests being verified and stored right now.",
            registry=registry,
        )
        self.shed = Counter(
            "gateway_webhooks_shed",
            "Webhook requests answered 503 because too many were in flight.",
            ["channel"],
            registry=registry,
        )
        self.ack_seconds = Histogram(
            "gateway_webhook_ack_seconds",
            "Time from request to the platform's 200.",
            ["channel"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.inbox_depth = Gauge(
            "gateway_inbox_depth", "Messages waiting or being processed.", registry=registry
        )
        self.inbox_oldest = Gauge(
            "gateway_inbox_oldest_age_seconds", "Age of the oldest open message.", registry=registry
        )
        self.turn_seconds = Histogram(
            "gateway_turn_seconds",
            "Whole turn time, by outcome.",
            ["outcome"],
            buckets=_TURN_BUCKETS,
            registry=registry,
        )
        self.llm_seconds = Histogram(
            "gateway_llm_seconds",
            "Time spent waiting for the model per turn.",
            buckets=_TURN_BUCKETS,
            registry=registry,
        )
        self.llm_tokens = Counter(
            "gateway_llm_tokens", "Tokens used, by type.", ["type"], registry=registry
        )
        self.tool_calls = Counter(
            "gateway_tool_calls",
            "Tool calls, by toolkit and outcome.",
            ["toolkit", "outcome"],
            registry=registry,
        )
        self.outbound = Counter(
            "gateway_outbound_messages",
            "Send attempts, by channel and outcome (sent, retry, dead).",
            ["channel", "outcome"],
            registry=registry,
        )
        self.rate_limit_wait = Counter(
            "gateway_rate_limit_wait_seconds",
            "Seconds of waiting imposed by platform rate limits.",
            ["channel"],
            registry=registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
