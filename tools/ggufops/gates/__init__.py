"""Benchmarks and gates: measure a candidate against its baseline and judge it by policy."""
