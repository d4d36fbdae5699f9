"""Offline evaluation: metrics, the system registry, the harness and its report (stage ``evaluate``)."""
