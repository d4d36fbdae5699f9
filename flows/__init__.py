"""Prefect flows: the entrypoints that prefect.yaml names and that the command line runs (no ML logic here).

A worker loads a flow file by path (``flows/drift.py:drift_monitor``) from the repository root; so does
``onevision drift`` (``onevision/app/entrypoints.py``). Flows chain the tasks in ``tasks/``; the library
(``onevision/``) never imports either (the import contracts in pyproject.toml).
"""

from onevision import redact

redact.install()  # a worker imports the flows without the CLI: credentials stay out of its logs too
