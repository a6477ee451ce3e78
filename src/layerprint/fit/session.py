"""One fit, from ``on_train_begin`` to its end: the work behind each of ``LayerprintCallback``'s hooks.

The training thread does what needs the model now (reading the state, dispatching reads, swapping the
train function) and hands the rest to one background thread, in order: hashing the fingerprints,
``sharing.json``, drift, the rows of ``batchnorm.npz``, writing the artifacts, and the fit's end. Whatever
ends the fit (its last hook, a fit that raised and never called it, ``close``, the interpreter's exit), it
ends through ``finish``: the model's own train function back, the last rows filed, the artifacts written,
the run bound by ``RunBinding`` ended.

The start's work off the training thread (the initial fingerprint and ``sharing.json``, the BatchNorm
rows, the checksum kernel's calibration, and the run's creation by the sink) waits for the fit's first
step to end, or ``START_WAIT_SECONDS``: during the first step Keras traces the train function, Python under
the interpreter's lock that this work would share (a fresh ResNet50 on two cores: its 25 s first step was
1.4-1.6 s longer than without layerprint with this work beside the trace, 0.06 s shorter with it after).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_futures
from dataclasses import dataclass
from typing import Any, Callable

import keras
import numpy as np

from layerprint import keys
from layerprint.cache import CACHE
from layerprint.compat import keras as keras_compat
from layerprint.fit import parts as part
from layerprint.fit.artifacts import Artifacts
from layerprint.fit.binding import START_WAIT_SECONDS, RunBinding, RunOptions
from layerprint.fit.capture import OptimizerBuildHook, variables_exist
from layerprint.fit.logs import StepLogs, is_number, numbers
from layerprint.fit.parts import Parts
from layerprint.fit.state import FitState
from layerprint.fit.values import VariableValues, read_values
from layerprint.inspection.batchnorm import find_batchnorm_layers, moving_statistics
from layerprint.inspection.call_sites import count_call_sites
from layerprint.inspection.fingerprint import exact_hash, fingerprint_arrays, l2_norm
from layerprint.inspection.paths import unique_variables, variable_paths
from layerprint.inspection.sharing import sharing_report, symmetry_warning
from layerprint.recording.calibration import kernel_speed, needs_measuring
from layerprint.recording.backends import device_for
from layerprint.recording.device import Device
from layerprint.recording.recorder import Budget, FlightRecorder, checksum_columns

logger = logging.getLogger("layerprint")
# What the callback finds in the model (symmetry that training never breaks), as opposed to its own trouble:
# the runner keeps these out of its jobs' logs and prints them after a sweep as findings.
findings = logging.getLogger("layerprint.findings")


@dataclass(frozen=True)
class FitOptions:
    """The callback's arguments about one fit (``LayerprintCallback`` documents them)."""

    run: RunOptions
    budget: Budget
    probe_batch: Any = None
    max_weights_artifact_params: int = 1_000_000
    strict: bool = False


class FitSession:
    """One fit (module doc).

    Args:
        options: the callback's arguments.
        synced_model: returns the model with its trained state in its variables (Keras's ``Callback.model``:
            on JAX, reading it copies the trainer's state back).
        model: the model itself (never synced).
    """

    def __init__(self, options: FitOptions, synced_model: Callable[[], Any], model: Any) -> None:
        self.options, self.synced_model, self.model = options, synced_model, model
        self.parts = Parts(options.strict)
        self.binding = RunBinding(options.run, self.parts)
        self.parts.on_first_error = lambda message: self.binding.set_tags({keys.TAG_CALLBACK_ERROR: message})
        self.state = FitState()
        self.recorder: FlightRecorder | None = None
        self.device: Device | None = None
        self.artifacts: Artifacts | None = None
        self.futures: list[Future] = []
        self.open, self.planned_steps, self.planned_epochs = False, None, None
        self._workers: dict[bool, ThreadPoolExecutor] = {}  # by ``ordered`` (``_background``)
        self._unordered: list[Future] = []  # computations the run's end waits for
        self.logs = StepLogs()
        self._hook: OptimizerBuildHook | None = None
        self._steps_written = 0  # the last global step ``steps.parquet`` was written at
        self._stepped = threading.Event()  # a step of this fit has ended (or the start's work is wanted now)

    @property
    def run_key(self) -> str:
        return self.binding.run_key

    # The hooks.
    def begin(self, keras_params: dict[str, Any] | None = None) -> None:
        """The fit begins; ``keras_params``: Keras's ``Callback.params`` (its steps and epochs, when known)."""
        params = keras_params or {}
        self.open, self.planned_epochs = True, params.get("epochs")
        self.planned_steps = (params.get("steps") or 0) * (self.planned_epochs or 0) or None
        CACHE.opened(self)
        self.artifacts = Artifacts(self._upload)
        self.progress = self.parts.guard(part.RUN, self.binding.start, self.artifacts.folder)
        if self.progress is None:
            from layerprint.fit.progress import RunProgress

            self.progress = RunProgress()
        if self.progress.finishing is not None:  # an earlier fit into this run is still uploading
            wait_for_futures([self.progress.finishing])
        self.progress.fits += 1
        state = self.state
        state.fit_index = self.progress.fits
        self.artifacts.prefix = state.prefix
        state.step_base = state.epoch_start_step = state.global_step = self.progress.last_step
        self.binding.set_tags(self.progress.tags(state.global_step))
        if variables_exist(self.synced_model()):
            self.capture(init_step=0, in_step=True)
        else:
            state.pending_capture = True
            self._hook = self.parts.guard(part.FINGERPRINTS, OptimizerBuildHook, self.synced_model(),
                                          lambda: self.capture(init_step=0), lambda: self.open and state.pending_capture)

    def batch_begin(self, batch: int) -> None:
        state = self.state
        if state.pending_capture and variables_exist(self.synced_model()):
            self.capture(init_step=0)
        previous = state.epoch_start_step + batch
        if self.recorder is not None and previous > state.step_base:  # the state the previous step left
            self._recorder_call(self.recorder.step_done, previous)
            if self.recorder.drain_due:
                self._file_logs()
                self._recorder_call(self.recorder.drain)

    def batch_end(self, batch: int, logs: dict[str, Any] | None) -> None:
        """Only a thread-safe append (Keras may call it off the training thread); filed at the next drain. After
        the fit's first step, the start's work goes on (module doc)."""
        step = self.state.finish_batch(batch)
        if not self._stepped.is_set():
            self._start_now()
        if self.state.pending_capture:
            self.capture(init_step=step)
        self.logs.append(step, self.state.current_epoch, logs)

    def epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        state, progress = self.state, self.progress
        last = epoch + 1 == self.planned_epochs
        logged_epoch = state.logged_epoch(epoch)
        state.epoch_start_step = state.global_step
        if state.pending_capture:
            self.capture(init_step=state.global_step)
        self._file_logs()
        if self.recorder is not None:
            self._recorder_call(self.recorder.epoch_done, state.global_step)
        if state.non_finite_step is None and is_number(logs.get("loss")) and not np.isfinite(float(logs["loss"])):
            state.non_finite_step = state.global_step
        points = {keys.epoch_key(name): value for name, value in logs.items()}
        if self.options.probe_batch is not None:
            points.update(self.parts.guard(part.PROBE, self.probe, logged_epoch) or {})
        self.binding.log_metrics(numbers(points), logged_epoch)
        values = self.parts.guard(part.VALUES, self.read_values, None, last)
        if self.recorder is not None:  # the state the epoch's last step left, then the record so far
            self._background(part.RECORDER, self._file_state, state.global_step, values)
            self._background(part.ARTIFACTS, self._write_steps)
        if values is not None:
            self._background(part.DRIFT, lambda: self.binding.log_metrics(state.drift(values.get()), logged_epoch),
                             ordered=False)
        if state.bn_layers:
            self._record_batchnorm(logged_epoch, values)
        progress.last_step, progress.last_epoch = state.global_step, logged_epoch
        self.binding.set_tags(progress.tags(state.global_step))

    def end(self) -> None:
        """``on_train_end``: the fit finished (or stopped early)."""
        state = self.state
        if state.pending_capture:
            self.capture(init_step=state.global_step)
        self._file_logs()
        recorder = self.recorder
        if recorder is not None:
            self._recorder_call(recorder.epoch_done, state.global_step, True)  # stopped inside an epoch: its rows
            self.binding.set_tags({keys.TAG_CHECKSUM_EVERY: str(self.progress.record.checksum_every),
                                   keys.TAG_PUBLISH_EVERY: str(recorder.publish_every),
                                   keys.TAG_PUBLISH_BN_EVERY: str(recorder.publish_bn_every)})
            if recorder.checksum_seconds is not None:
                CACHE.checksum_seconds[self.model] = recorder.checksum_seconds
        self.progress.last_step = state.global_step
        self.binding.set_tags(self.progress.tags(state.global_step))
        values = self.parts.guard(part.VALUES, self.read_values, None, True)
        self.finish("FINISHED" if state.non_finite_step is None else "FAILED", values)

    def abandon(self) -> None:
        """A fit that raised before its end (the next fit began, or the interpreter exits): ended FAILED."""
        self.binding.set_tags({keys.TAG_FAILURE: "fit raised before it ended (on_train_end never came)"})
        self.finish("FAILED", None)

    # The one end.
    def finish(self, status: str, values: VariableValues | None) -> None:
        """End the fit: the model's own train function and optimizers back, then, off the training thread,
        the final fingerprint, the last rows and artifacts, and the run's end (``RunBinding.end``); waited
        for unless the run is the callback's own and ``finish_in_background`` asks otherwise."""
        if not self.open:
            return
        self.open = False
        self._start_now()
        if self.device is not None:
            self.device.restore()  # even when the recorder part failed
        if self._hook is not None:
            self._hook.remove()
        if values is not None:
            self._background(part.FINGERPRINTS, self._fingerprint_end, values, ordered=False)
        self._background(part.FINISH, self._finish, status, values)
        self.progress.finishing = self.futures[-1] if self.futures else None
        for worker in self._workers.values():
            worker.shutdown(wait=False)  # its thread ends once the queued work is done
        self._workers = {}
        if not (self.binding.owns_run and self.options.run.finish_in_background):
            self.wait()
            self.binding.note_ended()

    def _fingerprint_end(self, final: VariableValues) -> None:
        """The final fingerprint, its tag and artifact (beside the ordered work of the fit's end)."""
        values = self.parts.guard(part.VALUES, final.get)
        if values is None:
            return
        state = self.state
        state.final_fingerprint = self.parts.guard(part.FINGERPRINTS, fingerprint_arrays, state.named(self.model, values))
        if state.final_fingerprint is not None:
            self.binding.set_tags({keys.TAG_FINAL_FINGERPRINT: state.final_fingerprint["model"]})
            self.parts.guard(part.ARTIFACTS, self.artifacts.json, keys.FINGERPRINTS_FINAL, state.final_fingerprint)

    def _finish(self, status: str, final: VariableValues | None) -> None:
        state, progress, artifacts = self.state, self.progress, self.artifacts
        values = self.parts.guard(part.VALUES, final.get) if final is not None else None
        if self.recorder is not None and self._steps_written < state.global_step:  # stopped without an epoch end
            self._file_state(state.global_step, final)
            self.parts.guard(part.ARTIFACTS, self._write_steps)
        if progress.probe_hashes:
            self.binding.set_tags({keys.TAG_PROBE_FINGERPRINT: progress.probe_hashes[-1]})
            self.parts.guard(part.ARTIFACTS, artifacts.probe, progress)
        if values is not None:
            self.parts.guard(part.ARTIFACTS, artifacts.final_weights, state.named(self.model, values),
                             self.options.max_weights_artifact_params)
        if progress.bn_epochs:
            self.parts.guard(part.ARTIFACTS, artifacts.batchnorm, progress)
        if state.non_finite_step is not None:
            self.binding.set_tags({keys.TAG_FAILURE: f"loss became non-finite at step {state.non_finite_step}"})
        wait_for_futures(self._unordered)  # the final fingerprint and the drift, computed beside this
        try:
            self.binding.end(status)
        finally:
            artifacts.cleanup()
            CACHE.closed(self)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the background work (the start's too, at once); whether all of it is done."""
        self._start_now()
        pending = [future for future in self.futures if not future.done()]
        if pending:
            wait_for_futures(pending, timeout)
        self.futures = [future for future in self.futures if not future.done()]
        return not self.futures

    # The start.
    def capture(self, init_step: int, in_step: bool = False) -> None:
        """Fingerprints, sharing, BatchNorm and probe rows, and the drift's reference at the start of the fit.

        Args:
            init_step: 0 when taken before the first update; else the step after which it was taken (a model
                that created its variables inside a step that no optimizer build hook saw).
            in_step: at train begin, before Keras calls the train function: the device may swap in a train
                function that records every step.
        """
        state, progress = self.state, self.progress
        state.pending_capture = False
        if not self._stepped.is_set() and not self.options.strict:  # the start's work waits (module doc)
            self._background(part.RECORDER, self._stepped.wait, START_WAIT_SECONDS)
        if init_step:
            logger.warning("layerprint: the model created its variables inside the first training step; its "
                           "initial fingerprint is taken after step %d (tag %s).", init_step, keys.TAG_INIT_STEP)
        model = self.synced_model()
        everything = model.variables  # Keras walks every layer for it: once here
        state.paths = variable_paths(model, everything)
        state.trainable_ids = {id(v) for v in model.trainable_variables}
        state.bn_layers = self.parts.guard(part.BATCHNORM, find_batchnorm_layers, model) or []
        variables = unique_variables(model, everything)
        self.device = self.parts.guard(part.RECORDER, self._device, variables, in_step)
        self.recorder = FlightRecorder(self.device, progress.record, self.binding, self.options.budget,
                                       state.step_base + 1, checksum_columns([state.paths[id(v)] for v in variables]),
                                       CACHE.checksum_seconds.get(self.model), self.planned_steps)
        function = self.device.train_function() if self.device is not None else None
        if function is not None:
            self.model.train_function = function  # for this fit; given back by ``finish``
        device = self.device
        if device is not None and needs_measuring(device.backend, *device.checksum_size()):
            self._background(part.CALIBRATION, kernel_speed, device.backend)  # what a checksum costs here
        values = self.parts.guard(part.VALUES, self.read_values, variables)
        state.initial_values = values
        start_epoch = progress.last_epoch
        if state.bn_layers and start_epoch not in progress.bn_epochs:
            self._record_batchnorm(start_epoch, values)
        sites = self.parts.guard(part.SHARING, count_call_sites, self.model)  # runs the model's call symbolically
        if values is not None:
            self._background(part.FINGERPRINTS, self._fingerprint_start, values, init_step, sites)
        if self.options.probe_batch is not None and start_epoch not in progress.probe_epochs:
            self.binding.log_metrics(self.parts.guard(part.PROBE, self.probe, start_epoch) or {}, start_epoch)

    def _device(self, variables: list[Any], in_step: bool) -> Device:
        """The model's device: the one its last fit made, when it still fits (its compiled steps are reused),
        else a new one, kept on the model."""
        device = keras_compat.kept(self.model)
        if device is None or not device.matches(self.model, [id(v) for v in variables]) or device.in_step_asked != in_step:
            device = device_for(self.model, variables, self.state.bn_layers, in_step)
            keras_compat.keep(self.model, device)
        return device

    def _fingerprint_start(self, initial: VariableValues, init_step: int, sites: Any) -> None:
        """The initial fingerprint and ``sharing.json``, off the training thread; the run's first fit also
        sets the run's init tags."""
        values = self.parts.guard(part.VALUES, initial.get)
        if values is None:
            return
        state = self.state
        fingerprint = self.parts.guard(part.FINGERPRINTS, fingerprint_arrays, state.named(self.model, values))
        state.initial_fingerprint = fingerprint
        records = fingerprint["variables"] if fingerprint else []
        sharing = self.parts.guard(part.SHARING, sharing_report, self.model, records, sites) if sites is not None else None
        state.sharing = sharing
        warning = symmetry_warning(sharing["identical_initial_values"]) if sharing else None
        if warning:
            findings.warning(warning)
        if fingerprint is not None and state.fit_index == 1:
            self.binding.set_tags({keys.TAG_INIT_FINGERPRINT: fingerprint["model"],
                                   keys.TAG_INIT_TOLERANT: fingerprint["tolerant"], keys.TAG_INIT_STEP: str(init_step),
                                   **({keys.TAG_SYMMETRY_WARNING: "true"} if warning else {})})
        self.parts.guard(part.ARTIFACTS, self.artifacts.start, fingerprint, sharing)

    # Reading the model.
    def read_values(self, variables: list[Any] | None = None, final: bool = False) -> VariableValues:
        """Every variable's current value (``fit.values.read_values``); ``final``: no step follows."""
        if variables is None:
            variables = unique_variables(self.synced_model())  # on JAX, the trained state synced first
        return read_values(self.device, variables, final)

    def probe(self, epoch: int) -> dict[str, float]:
        """Fingerprint and norm of the model's output on the probe batch, recorded for ``epoch``."""
        output = np.asarray(keras.ops.convert_to_numpy(self.synced_model()(self.options.probe_batch, training=False)))
        progress = self.progress
        progress.probe_epochs.append(epoch)
        progress.probe_hashes.append(exact_hash(output))
        progress.probe_norms.append(l2_norm(output))
        return {keys.PROBE_NORM: progress.probe_norms[-1]}

    def _record_batchnorm(self, epoch: int, values: VariableValues | None) -> None:
        """A row of ``batchnorm.npz`` for ``epoch``, filed by the background thread after the rows before it:
        from ``values``, or read from the layers now when the values could not be read."""
        bn_layers = self.state.bn_layers
        if values is None:
            statistics = self.parts.guard(part.BATCHNORM, moving_statistics, bn_layers)
            if statistics is None:
                return
            read = lambda: statistics  # noqa: E731
        else:
            read = lambda: moving_statistics(bn_layers, values.get())  # noqa: E731

        def file() -> None:
            for name, row in read().items():
                self.progress.bn_history.setdefault(name, []).append(row)
            self.progress.bn_epochs.append(epoch)

        self._background(part.BATCHNORM, file)

    # Filing.
    def _recorder_call(self, function: Callable[..., Any], *args: Any) -> None:
        """A call of the recorder; when its device fails, the recorder goes on with the logs alone (the call is
        made again without the device)."""
        if self.parts.ok(part.RECORDER):
            self.parts.guard(part.RECORDER, function, *args)
            if self.parts.ok(part.RECORDER):
                return
        if self.recorder.device is not None:
            self.recorder.drop_device()
        self.parts.guard(part.STEPS, function, *args)

    def _file_state(self, step: int, values: VariableValues | None) -> None:
        """The state ``step`` left into the record, from ``values`` (background thread)."""
        device = self.recorder.device
        hosted = self.parts.guard(part.VALUES, values.get) if values is not None else None
        ordered = [hosted.get(i) for i in device.variable_ids] if hosted is not None and device is not None else None
        self._recorder_call(self.recorder.file_state, step,
                            None if ordered is None or any(v is None for v in ordered) else ordered)

    def _write_steps(self) -> None:
        self._steps_written = self.state.global_step
        self.artifacts.steps(self.progress.record)

    def _file_logs(self) -> None:
        started = time.perf_counter()
        self.parts.guard(part.STEPS, self.logs.file, self.progress.record, self.state)
        if not self.parts.ok(part.STEPS):
            self.logs = StepLogs()  # what could not be filed is dropped, not kept for the rest of the fit
        if self.recorder is not None:
            self.recorder.spend(time.perf_counter() - started)

    def _upload(self, path: Any, artifact_path: str) -> None:
        self.binding.log_artifact(path, artifact_path)

    def _start_now(self) -> None:
        """The start's work goes on now: the fit's first step is done, or the fit ends, or it is waited for."""
        self._stepped.set()
        self.binding.first_step_done()

    def _background(self, name: str, function: Callable[..., Any], *args: Any, ordered: bool = True) -> None:
        """``function(*args)`` guarded as part ``name``, off the training thread (at once under ``strict``, so that
        errors reach the caller): ``ordered``, on the fit's background thread after the work queued before
        it; else on a second thread, beside it (a computation of its own that releases the GIL: the drift,
        the final fingerprint), which the run's end waits for."""
        if self.options.strict:
            function(*args)
            return
        worker = self._workers.get(ordered)
        if worker is None:
            worker = self._workers[ordered] = ThreadPoolExecutor(
                1, thread_name_prefix="layerprint-finish" if ordered else "layerprint-compute")
        try:
            future = worker.submit(self.parts.guard, name, function, *args)
        except RuntimeError:  # the interpreter is exiting: no new threads
            self.parts.guard(name, function, *args)
            return
        self.futures.append(future)
        if not ordered:
            self._unordered = [pending for pending in self._unordered if not pending.done()] + [future]
