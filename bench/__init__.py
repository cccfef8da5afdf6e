"""Benchmarks for dicom-archive: every figure is a ratio against a baseline from the same run.

Run with ``make bench`` (quick, a few minutes) or ``make bench-full`` (the 1M-instance
figures). Results are printed and written under ``bench/results/``.
"""
