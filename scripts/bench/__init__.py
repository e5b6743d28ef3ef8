"""Benchmark library of ``scripts/benchmark.py`` and ``scripts/compare_models.py``: common measurement
(:mod:`.measure`), the networks compared (:mod:`.peers`) and one module per suite (:mod:`.latency`,
:mod:`.architecture`, :mod:`.throughput`)."""
