"""Benchmarks comparing hefl with the starting-point approach."""
