"""Benchmarks (``make bench``): never part of ``make test``; figures go to docs/benchmarks.md."""
