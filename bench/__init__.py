"""jobwire benchmarks: `python -m bench` (or `make bench`) prints one table; see docs/performance.md."""
