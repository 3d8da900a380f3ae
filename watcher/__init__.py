"""watcher: the long-running reactor to call documents (pushes, ring timeouts, transition checks)."""
