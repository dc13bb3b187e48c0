"""Comparing models: the demo, the benchmark runner and their reports."""
