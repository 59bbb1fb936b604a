"""predictions resource."""
