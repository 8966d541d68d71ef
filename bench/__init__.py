"""Benchmarks: `python -m bench.run [--quick] [--sections a,b]` (see BENCHMARKS.md)."""
