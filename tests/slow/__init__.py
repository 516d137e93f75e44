"""Slow end-to-end tests (minutes): the benchmark harness's quick run and its clean-up paths."""
