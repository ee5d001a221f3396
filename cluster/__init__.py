"""Where vitrine runs: cluster configuration and helpers to start clusters (see README)."""
