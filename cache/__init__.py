"""Caching in front of the store: L1 (in process), L2 (Redis), single-flight misses."""
