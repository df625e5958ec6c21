"""Training: the papers recipe, the loop and its modes."""
