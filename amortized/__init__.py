"""amortized: see docs/architecture.md."""
