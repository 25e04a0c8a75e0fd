"""Benchmark: every hot path against a no-op gRPC baseline measured in the same run."""
