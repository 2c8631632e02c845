"""Custody's benchmarks (``make bench``): each reports ratios against a baseline of the same run."""
