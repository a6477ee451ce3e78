"""Getting points into MLflow and never losing them: the store, redaction, the spool, the sink.

Never imports the runner or Hydra.
"""
