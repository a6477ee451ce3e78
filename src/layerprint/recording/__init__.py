"""The flight record: every optimizer step's logs and state in ``steps.parquet``, a budgeted share in MLflow.

- ``record``: the record's columns, in memory and in ``steps.parquet`` (written and read there only);
- ``checksum``: the checksum's definition, its NumPy reference and one compiled kernel per backend;
- ``device`` and one module per backend (``tensorflow``, ``jax``, ``torch``): a model's state on its
  device, recorded in the train step or read between steps;
- ``policy`` and ``calibration``: how often to checksum and publish, from measured costs;
- ``recorder``: the ``FlightRecorder`` of one fit, which files the state with the logs and publishes to
  the sink.
"""
