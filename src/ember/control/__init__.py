"""The control loops: they observe the store and the backends, call pure decisions in core, and act."""
