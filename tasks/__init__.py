"""Prefect tasks: thin wrappers over onevision/ functions (no ML logic here)."""
