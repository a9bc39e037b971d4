"""Prometheus metrics of the gateway, in a registry of their own (one per app, so tests
can read exactly what one gateway counted)."""

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway.events import (
    DISPUTE_CLOSED_EVENT,
    DISPUTE_CREATED_EVENT,
    PURCHASE_EVENTS,
    REFUND_EVENT,
    REFUND_FAILURE_EVENTS,
)

# Label values come from Stripe-signed input only through this allow-list, so an
# unknown event type cannot grow the number of series.
EVENT_TYPE_LABELS = frozenset(
    {
        *PURCHASE_EVENTS,
        REFUND_EVENT,
        *REFUND_FAILURE_EVENTS,
        DISPUTE_CREATED_EVENT,
        DISPUTE_CLOSED_EVENT,
    }
)
OTHER_EVENT_TYPE = "other"
# Stripe gives up on a delivery after a few seconds; buckets around that.
WEBHOOK_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A webhook answered with a status from here on failed at our end (Stripe retries it).
FAILED_STATUS_MIN = 500
# Below this it was taken; a 4xx (a bad signature, a body too large) neither fails nor
# takes a delivery, so it leaves a streak of failures as it is.
REFUSED_STATUS_MIN = 400


def event_type_label(event_type: str) -> str:
    return event_type if event_type in EVENT_TYPE_LABELS else OTHER_EVENT_TYPE


@dataclass
class GatewayMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.webhooks = Counter(
            "credits_gateway_webhooks",
            "Webhook requests by event type, outcome and HTTP status.",
            ["event_type", "outcome", "status"],
            registry=self.registry,
        )
        self.service_calls = Counter(
            "credits_gateway_service_calls",
            "Calls to the credits service by RPC and gRPC status code.",
            ["rpc", "code"],
            registry=self.registry,
        )
        self.webhook_seconds = Histogram(
            "credits_gateway_webhook_seconds",
            "Time to answer a webhook request.",
            buckets=WEBHOOK_SECONDS_BUCKETS,
            registry=self.registry,
        )

        self.consecutive_failures = Gauge(
            "credits_gateway_webhook_consecutive_failures",
            "Webhooks answered 5xx since the last one that was taken (2xx).",
            registry=self.registry,
        )

    def webhook(self, event_type: str, outcome: str, status: int, seconds: float) -> None:
        self.webhooks.labels(event_type_label(event_type), outcome, str(status)).inc()
        self.webhook_seconds.observe(seconds)
        if status >= FAILED_STATUS_MIN:
            self.consecutive_failures.inc()
        elif status < REFUSED_STATUS_MIN:
            self.consecutive_failures.set(0)

    def service_call(self, rpc: str, code: str) -> None:
        self.service_calls.labels(rpc, code).inc()

    def service_calls_total(self) -> float:
        """Every call made, whatever its outcome (what tests of "no call" read)."""
        return sum(
            sample.value
            for metric in self.service_calls.collect()
            for sample in metric.samples
            if sample.name.endswith("_total")
        )
