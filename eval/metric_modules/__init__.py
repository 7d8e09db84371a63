"""Local `evaluate` modules, loaded by path with `evaluate.load` (see eval/metrics.py)."""
