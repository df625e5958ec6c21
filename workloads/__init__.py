"""unravel workloads: pure PyTorch networks, data, training and test-time surgery (no Ray)."""
