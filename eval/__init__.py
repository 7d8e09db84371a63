"""Runs, data, models, partitions and reports of the FLIQS toolkit."""

__version__ = "0.1.0"
