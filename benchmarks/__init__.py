"""Benchmarks and development suites (not installed; run from the repository root)."""
