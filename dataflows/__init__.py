"""Bytewax dataflow definitions."""
