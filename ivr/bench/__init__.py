"""Benchmarks run by `ivr bench NAME`; each prints its figures and the command that made them."""
