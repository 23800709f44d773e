"""circuits: see docs/architecture.md."""
