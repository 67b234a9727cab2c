"""Training utilities: checkpoints, metric writers, the meta-training loop."""
