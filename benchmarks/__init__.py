"""Benchmarks: ``python -m benchmarks`` (the single-device table), ``python -m
benchmarks.distributed_scaling`` (the sharded head). See benchmarks/RESULTS.md."""
