"""Benchmarks that print figures (speed and quality), never timed tests."""
