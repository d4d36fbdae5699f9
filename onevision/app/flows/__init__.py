"""Prefect flows that chain the tasks in onevision.app.tasks."""

from onevision import redact

redact.install()  # a worker imports the flows without the CLI: credentials stay out of its logs too
