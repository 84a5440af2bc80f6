"""Benchmarks of the speed goals (see bench/RESULTS.md); run as `python -m bench.<name>`."""
