"""Benchmarks of pinas's search on public ground truth (TransNAS-Bench-101's micro space)."""
