"""Per-row scores and their bootstrap intervals."""
