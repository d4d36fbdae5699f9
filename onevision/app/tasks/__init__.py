"""Prefect tasks: thin wrappers over library functions (no ML logic here)."""
