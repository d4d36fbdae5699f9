"""Drift monitoring with Evidently: is production query traffic still like the training data?

Compares a *current* window of query traffic with the *reference* window (the
champion's training split) on the query-image embedding, photo statistics,
the generated-SID distribution, product and user features and data quality;
writes an Evidently HTML report and a JSON summary, and alerts. Entry points:
the ``drift_monitor`` Prefect flow (``flows/drift.py``), which both the
``drift-daily`` deployment and ``onevision drift`` run, and
:func:`onevision.monitoring.check.run_drift_check` (publishing: ``publish.py``, alerts: ``alert.py``).
On-call guide: ``docs/oncall.md``.
"""
