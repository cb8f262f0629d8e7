"""Pretraining: the model, its loss and optimizer, the step, the loop and the run directory."""
