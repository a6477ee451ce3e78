"""The rooms of ``LayerprintCallback``: one fit's work, split by job.

- ``session``: ``FitSession``, one fit from its begin to its end, which the callback's hooks call;
- ``state``: ``FitState``, what one fit knows (its steps and epochs, the model's paths and layers);
- ``binding``: ``RunBinding``, which run the fit logs into, its one way to start and one way to end;
- ``progress``: ``RunProgress``, what earlier fits logged into a run;
- ``capture``: the start of a fit (fingerprints, ``sharing.json``, row 0 of ``batchnorm.npz``);
- ``artifacts``: ``Artifacts``, the run's files, written and queued for upload;
- ``parts``: ``Parts``, a part that raises is reported once and skipped, never breaking the fit;
- ``values``: ``VariableValues``, every variable's value at one moment, brought to the host later;
- ``logs``: the logs Keras gives each step, kept as they come and filed in the flight record later.
"""
