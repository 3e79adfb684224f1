"""What operators watch the gateway with: Prometheus metrics (:mod:`.metrics`),
OpenTelemetry traces (:mod:`.tracing`) and structured logs (:mod:`.logs`)."""
