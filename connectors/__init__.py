"""featsieve connectors."""
