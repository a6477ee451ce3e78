"""Hydra configs for layerprint, packaged so that an installed wheel finds them."""
