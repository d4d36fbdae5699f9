"""The model registry (MLflow aliases and tags), its append-only audit log, and the check that the
``champion`` was set by an audited decision (what serving and drift refuse otherwise)."""
