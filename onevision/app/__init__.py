"""The command line (``onevision``). Its commands that have a Prefect flow run the flow files in ``flows/`` at
the repository root (``entrypoints.py``), never importing ``flows`` or ``tasks`` as modules.

Everything below it (``onevision.*`` outside ``onevision.app``) is the library: ML and domain logic that
imports neither Prefect nor this package; ``tests/policy/test_layers.py`` checks it with import-linter.

Each command imports its heavy libraries (torch, mlflow, pandas, ...) inside its function, so ``onevision --help``
and the light commands start at once; a ``# lazy:`` comment names them (their cost: ``HEAVY`` in
``tests/policy/test_lazy_imports.py``).
"""
