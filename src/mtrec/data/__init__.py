"""Prepared datasets, batches, readers and the synthetic generator."""
