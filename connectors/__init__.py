"""Thin sources and sinks: files, Kafka, the store."""
