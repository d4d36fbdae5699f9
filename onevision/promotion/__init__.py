"""Gated promotion: register a candidate (its serving bundle), check its gates, approve/reject, roll back.

Above ``onevision.registry`` (the MLflow registry, its audit log and the champion check serving relies on)
and ``onevision.serving`` (the bundle it registers)."""
