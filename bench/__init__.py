"""Benchmarks: each module runs with `python -m bench.NAME`, prints a table, writes JSON."""
