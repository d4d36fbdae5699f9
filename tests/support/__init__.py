"""What the tests share, kept out of the test folders (pytest collects nothing here).

* ``projects``: the one way to build a project for a test (:func:`tests.support.projects.build_project`);
* ``defaults``: the default params.yaml and dvc.yaml, never the run state a retrain left in the checkout;
* ``synthetic_shop``, ``tiny_trained``, ``stand_in``: the data and artifacts some kinds of project hold;
* ``flows``: the Prefect flows loaded by file path, as a worker loads them;
* ``stack``: the shared stack (PostgreSQL, S3, MLflow and Prefect servers, a worker) on loopback;
* ``crash``, ``proxy``, ``drill``: SIGKILLing a flow, a fault-injecting HTTP proxy, the drill's counters;
* ``browser``, ``markdown_tables``: a headless browser, and reading the markdown tables reports write.
"""
