"""Benchmarks that print numbers (never timed assertions). ``python -m synth.bench [NAME]``."""
