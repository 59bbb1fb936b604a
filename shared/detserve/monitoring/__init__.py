"""Monitoring: per-service request counters and the components' heartbeats."""
