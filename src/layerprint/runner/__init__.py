"""The Hydra runner: ``layerprint-train`` trains the variants and logs them with the callback."""
