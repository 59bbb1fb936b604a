"""flavors resource."""
