"""Throughput profiling: measured windows around the same step, the report, the verdict, sweeps."""
