"""What a Keras model holds: variable paths, fingerprints, sharing, BatchNorm statistics.

Imports Keras and NumPy only (never MLflow, Hydra or the runner).
"""
