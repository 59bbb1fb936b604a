"""services resource."""
