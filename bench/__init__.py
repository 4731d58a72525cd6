"""Benchmarks: pytest-benchmark suites (bench_*.py), the side-by-side runner (`python -m bench.compare`), shared helpers."""
