"""recorder: the recording worker (not built yet; see the recording issue)."""
