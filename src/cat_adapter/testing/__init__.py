"""Fixtures for tests, benchmarks and smoke runs: tiny random-weight models built from config, synthetic
concept folders. Not part of the training or evaluation code paths."""
