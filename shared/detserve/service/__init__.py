"""The service layer: versions and model packages, deployments, status changes, artifacts."""
