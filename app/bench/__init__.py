"""Benchmark through Kafka: `python -m app.bench`."""
