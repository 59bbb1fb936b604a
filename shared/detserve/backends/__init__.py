"""Inference backends: one protocol, one module per runtime."""
