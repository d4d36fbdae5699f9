"""Prefect tasks: thin wrappers over library functions (no ML logic here)."""

from onevision import redact

redact.install()  # a flow file loaded by path does not run flows/__init__.py; every flow imports a task module
