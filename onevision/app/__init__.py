"""The application layer: the command line (``onevision``) and the Prefect flows and tasks.

Everything below it (``onevision.*`` outside ``onevision.app``) is the library: ML and domain logic that
imports neither Prefect nor this package; ``tests/code/test_layers.py`` checks it with import-linter.
"""
