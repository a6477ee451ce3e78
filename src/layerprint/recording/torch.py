"""PyTorch: one read of the state between steps, dispatched on the device, brought to the host in batches.

``read`` computes the flat BatchNorm statistics and, when due, every variable's checksum with PyTorch
operations on the variables' own tensors (on a GPU, queued behind the step and not waited for); ``drain``
brings the reads since the last drain to the host together. Keras's PyTorch trainer keeps the trained state
in the variables themselves, so nothing is synced.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from layerprint.recording.checksum import checksums_torch
from layerprint.recording.device import MISSING_CHECKSUM, Device, Rows


class TorchDevice(Device):
    """The state of a model trained by PyTorch (module doc).

    Args:
        model: the compiled Keras model.
        variables: the variables to checksum.
        batchnorm_layers: its BatchNormalization layers.
    """

    backend = "torch"

    def __init__(self, model: Any, variables: list[Any], batchnorm_layers: list[tuple[str, Any]]) -> None:
        super().__init__(model, variables, batchnorm_layers)
        self._pending: list[tuple[int, Any, Any]] = []

    def start(self, first_step: int, checksum_every: int) -> None:
        super().start(first_step, checksum_every)
        self._pending = []

    def matches(self, model: Any, variable_ids: list[int]) -> bool:
        return self.model is model and self.variable_ids == variable_ids

    def read(self, step: int, with_checksums: bool) -> None:
        import torch

        with torch.no_grad():
            bn = (torch.cat([v.value.detach().reshape(-1).float() for v in self.bn_variables]) if self.bn_variables
                  else None)
            sums = checksums_torch([v.value for v in self.variables]) if with_checksums else None
        self._pending.append((step, bn, sums))

    def drain(self) -> Rows:
        pending, self._pending = self._pending, []
        if not pending:
            return Rows.empty(self.n_bn, len(self.variables))
        checksums = np.full((len(pending), len(self.variables)), MISSING_CHECKSUM, np.int64)
        for i, (_, _, sums) in enumerate(pending):
            if sums is not None:
                checksums[i] = sums.cpu().numpy()
        batchnorm = (np.stack([bn.cpu().numpy() for _, bn, _ in pending]) if self.bn_variables
                     else np.zeros((len(pending), 0), np.float32))
        return Rows(np.asarray([step for step, _, _ in pending], np.int64), batchnorm, checksums)

    def wait(self) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def snapshot(self, final: bool = False) -> list[Any]:
        """Every variable's value, copied on its device (queued, not waited for), ``final`` too: a fit that
        returns before its run's end (``finish_in_background``) may train the tensors again at once."""
        import torch

        with torch.no_grad():
            return [v.value.detach().clone() for v in self.variables]

    def host(self, snapshot: list[Any], final: bool = False) -> list[np.ndarray]:
        import keras

        return [np.asarray(keras.ops.convert_to_numpy(t)) for t in snapshot]  # as ``Variable.numpy()`` gives them
