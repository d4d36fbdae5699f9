"""Drift monitoring with Evidently: is production query traffic still like the training data?

Compares a *current* window of query traffic with the *reference* window (the
champion's training split) on the query-image embedding, photo statistics,
the generated-SID distribution, product and user features and data quality;
writes an Evidently HTML report and a JSON summary, and alerts. Entry points:
``onevision drift`` (:mod:`onevision.app.monitoring_cli`), the ``drift_monitor``
Prefect flow (``onevision/app/flows/drift.py``) and :func:`onevision.monitoring.monitor.run_drift_check`.
On-call guide: ``docs/oncall.md``.
"""
