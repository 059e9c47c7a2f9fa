"""Benchmarks: handoff, failover, cost and scale, side by side with single-beat."""
