"""featsieve daemon."""
