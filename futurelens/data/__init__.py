"""Corpora, the Future Lens prefix dataset, and the sharded hidden-state cache."""
