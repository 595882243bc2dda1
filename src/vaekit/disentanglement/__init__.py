"""Disentanglement: the procedural dSprites dataset and the metrics of disentanglement_lib."""
