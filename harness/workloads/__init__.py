"""Benchmarks: command lines per benchmark and pure parsers of tool output."""
