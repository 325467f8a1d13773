"""featsieve models."""
