"""Benchmarks: they print ratio tables measured in one run. Not tests (`make bench`)."""
