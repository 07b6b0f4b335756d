"""Benchmarks (not tests): `python -m bench.turns` prints JSON figures. See bench/README.md."""
