"""Benchmarks behind `egox bench ...`: each prints one JSON document and can refresh its section of docs/benchmarks.md."""
