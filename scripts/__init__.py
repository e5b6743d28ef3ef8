"""Command-line programs of the LH-UTANet bundle (benchmarks, comparisons, export, packaging, checks)."""
