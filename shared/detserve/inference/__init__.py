"""Inference: the detector (pre-process, backend, post-process), batching and the worker's tasks."""
