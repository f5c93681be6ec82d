"""CLaaS benchmarks: `python -m bench` (or `./claas bench`) runs them and writes bench/BENCHMARKS.md."""
