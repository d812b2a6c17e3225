"""Training: on-device sampling, the optimisation loop, checkpoints, inference and outputs."""
