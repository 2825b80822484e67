"""Layer 0, base: what every layer uses, importing nothing of the project: safe file writing (``files``), the
user-error type (``errors``), and the one deprecation warning (``deprecation``)."""
