"""Compute backends: where worker processes actually run (in memory, local processes, Docker)."""
