"""Benchmarks of zsq_engine (not run by CI). See benchmarks/README.md."""
