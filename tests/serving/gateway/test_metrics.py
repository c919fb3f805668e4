"""GatewayMetrics.child: the memoised `labels()` the request path uses."""

from serving.gateway.metrics import GatewayMetrics


def test_child_is_the_labelled_child_and_is_reused():
    m = GatewayMetrics()
    child = m.child(m.requests, "Predict", "OK")
    assert child is m.requests.labels("Predict", "OK")
    assert m.child(m.requests, "Predict", "OK") is child
    assert m.child(m.requests, "Predict", "UNAUTHENTICATED") is not child
    # same label values on another metric: another child
    assert m.child(m.refusals, "Predict", "OK") is not child
    child.inc()
    m.child(m.latency, "Predict").observe(0.002)
    assert m.registry.get_sample_value(
        "mx_gateway_requests_total", {"method": "Predict", "code": "OK"}) == 1.0
    assert m.registry.get_sample_value(
        "mx_gateway_request_latency_seconds_count", {"method": "Predict"}) == 1.0
