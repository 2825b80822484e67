"""Layer 0, base: what every layer uses and nothing of the project's own: safe file writing (``files``)."""
