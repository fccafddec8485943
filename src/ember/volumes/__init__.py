"""Network volumes on this host (loop-mounted images where the host allows it, directories elsewhere)."""
