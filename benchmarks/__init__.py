"""OneVision's benchmarks: one script per question (see docs/results.md), and ``python -m benchmarks run`` for the page."""
