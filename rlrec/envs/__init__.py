"""Interest-drift simulator: the single Gymnasium env and the batched vector env."""
