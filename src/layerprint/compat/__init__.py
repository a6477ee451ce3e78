"""Every use of a dependency's private or version-dependent API, in one module per dependency.

A module here names the version each use was checked against; ``tests/test_compat_apis.py`` calls every
one of them on the installed version and fails with a message that names the use when the dependency
changed it. Nothing outside this package reaches into a dependency's private names. Where a public
route exists, the function takes it and says so.

- ``compat.keras``: layer structure (sublayers, functional graphs), symbolic calls, the trainer's state.
- ``compat.mlflow``: the fluent API's current experiment, tracking URI and last active run.
- ``compat.hydra``: the joblib launcher's config and loky's reusable executor.
- ``compat.ray``: the name of Ray's worker logger.
"""
