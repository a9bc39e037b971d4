"""The gateway's count of webhooks failed in a row (the alert on 5 consecutive failures):
a 5xx adds one, a webhook taken ends the streak, a 4xx (not Stripe's delivery failing at
our end) leaves it as it is."""

from gateway.metrics import GatewayMetrics


def streak(metrics: GatewayMetrics) -> float:
    value = metrics.registry.get_sample_value("credits_gateway_webhook_consecutive_failures")
    assert value is not None
    return value


def test_failures_in_a_row_are_counted_until_one_is_taken() -> None:
    metrics = GatewayMetrics()
    for _ in range(3):
        metrics.webhook("checkout.session.completed", "service_unavailable", 503, 0.01)
    assert streak(metrics) == 3
    metrics.webhook("", "bad_signature", 400, 0.01)
    assert streak(metrics) == 3
    metrics.webhook("checkout.session.completed", "internal_error", 500, 0.01)
    assert streak(metrics) == 4
    metrics.webhook("checkout.session.completed", "granted", 200, 0.01)
    assert streak(metrics) == 0
