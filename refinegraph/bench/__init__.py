"""Benchmarks run by `refinegraph bench ...`: they print figures and write a report.

They are commands, not tests: nothing here asserts a threshold; a missed goal is
printed as missed.
"""
