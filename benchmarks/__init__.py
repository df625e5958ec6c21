"""Benchmarks: each prints ratios measured in one run against the naive way."""
