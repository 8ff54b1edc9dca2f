"""Benchmarks, run with `python -m benchmarks <name>`; each prints ratios against a same-run baseline."""
