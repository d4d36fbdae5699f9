"""Model registry and promotion: register a candidate, check its gates, approve/reject, roll back (MLflow aliases)."""
