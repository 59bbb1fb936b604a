"""models resource."""
