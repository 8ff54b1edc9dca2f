"""Plugin cache, last-value and distinct-value caches, and their persistence."""
