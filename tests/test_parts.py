"""The parts of the flight recorder and the sink, each tested on its own without training a model: the record
and its file, the cadence policy, the recorder over a device of NumPy arrays, the sink into a real SQLite store
and a real server that dies, the spool's replay."""

import json
import time
from types import SimpleNamespace

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from layerprint import keys
from layerprint.recording import policy
from layerprint.recording.checksum import checksums_numpy
from layerprint.recording.device import MISSING_CHECKSUM, Device, Rows
from layerprint.recording.record import StepRecord, read_steps
from layerprint.recording.recorder import Budget, FlightRecorder
from layerprint.tracking import spool
from layerprint.tracking.sink import RunSink, SinkStats


# The record.
def test_the_record_keeps_every_step_and_reads_back_what_it_wrote(tmp_path):
    record = StepRecord()
    for step in range(1, 301):  # grows past its first capacity
        record.set_metrics(step, 1 + (step - 1) // 100, 1000.0 + step, {"train/loss": 1.0 / step})
    record.set_vector([1, 2, 3], ["bn/bn/moving_mean/mean"], np.asarray([[0.5], [0.25], [0.125]], np.float32))
    record.set_vector([1, 3], ["checksum/d/kernel"], np.asarray([[7], [2**32 - 1]], np.int64))
    record.checksum_every = 2
    assert record.row(3) == {"train/loss": pytest.approx(1 / 3), "bn/bn/moving_mean/mean": 0.125}
    steps = read_steps(record.write(tmp_path / keys.STEPS))
    assert list(steps.columns["step"]) == list(range(1, 301)) and steps.checksum_every == 2
    assert list(steps.columns["checksum/d/kernel"][:3]) == [7, MISSING_CHECKSUM, 2**32 - 1]
    assert steps.series("bn/bn/moving_mean/mean") == {1: 0.5, 2: 0.25, 3: 0.125}
    again = StepRecord.from_file(tmp_path / keys.STEPS)
    again.set_metrics(301, 4, 0.0, {"train/loss": 0.0})
    assert again.last_step == 301 and again.row(300) == {"train/loss": pytest.approx(1 / 300)}


def test_a_nan_loss_is_a_value_and_a_missing_one_is_null(tmp_path):
    record = StepRecord()
    record.set_metrics(1, 1, 0.0, {"train/loss": float("nan")})
    record.set_metrics(3, 1, 0.0, {"train/loss": 1.0})
    table = record.to_table()
    assert table.column("train/loss").to_pylist()[1] is None and np.isnan(table.column("train/loss")[0].as_py())


# The policy.
def test_checksums_stay_every_step_below_the_floor_and_rise_in_powers_of_two_above_it():
    assert policy.checksum_every(5e-5, 1e-3, 0.02) == 1  # 5 % of a tiny step, but 50 us: always taken
    assert policy.checksum_every(0.003, 0.3, 0.02) == 1  # 1 %: under three quarters of the budget
    assert policy.checksum_every(0.0167, 0.656, 0.02) == 2  # ResNet50 on two CPU cores: 2.5 %
    assert policy.checksum_every(0.1, 0.1, 0.02) == 128  # as costly as the step


def test_checksums_rise_only_where_the_rise_pays_for_itself_before_the_fit_ends():
    # ResNet50 on two CPU cores, checksums in the step: 16.7 ms of a 656 ms step; a rise traces the train
    # function without checksums, about 20 s. A 30-step fit never earns that back; 10,000 steps do.
    assert policy.checksum_every(0.0167, 0.656, 0.02, steps_left=26, switch_seconds=20.0) == 1
    assert policy.checksum_every(0.0167, 0.656, 0.02, steps_left=10_000, switch_seconds=20.0) == 2
    assert policy.checksum_every(0.0167, 0.656, 0.02, steps_left=None, switch_seconds=20.0) == 2  # unknown length


def test_publishing_rises_when_the_sink_costs_more_than_the_budget_left():
    # The small CNN on two CPU cores: 7.3 ms a step, 2 logged points and 24 BatchNorm summaries a step, the
    # SQL store's 0.15 ms of CPU a point: the loss every 8 steps, the summaries every 128.
    assert policy.publish_cadences(150e-6, 2, 24, 7.3e-3, 7.3e-3, 0.005, 0.02) == (8, 128)
    assert policy.publish_cadences(150e-6, 2, 0, 0.5, 0.5, 0.0, 0.02) == (1, 1)  # a slow step: every step
    assert policy.publish_cadences(150e-6, 2, 0, 7.3e-3, 7.3e-3, 0.005, 0.02) == (4, 4)  # no BatchNorm: all for the logs
    # the summaries' cadence is never finer than the logs'
    assert policy.publish_cadences(150e-6, 200, 1, 7.3e-3, 7.3e-3, 0.0, 0.02) == (512, 512)
    assert policy.publish_cadences(150e-6, 2, 24, 7.3e-3, 7.3e-3, 0.03, 0.02) == (policy.MAX_PUBLISH_EVERY,) * 2  # spent
    # A 30-step ResNet50 fit (0.65 s a step after a 20 s trace: 1.3 s a step of the fit): the loss every
    # step, the 424 summaries every 16 steps, as in a fit of any length
    assert policy.publish_cadences(150e-6, 2, 424, 1.3, 0.65, 0.005, 0.02) == (1, 16)
    assert policy.publish_cadences(150e-6, 2, 424, 0.65, 0.65, 0.005, 0.02) == (1, 16)


# The recorder, over a device of NumPy arrays.
class HostDevice(Device):
    """A device whose variables are NumPy arrays, read between steps; ``break_at`` makes a drain raise."""

    backend = "numpy"

    def __init__(self, arrays, break_at=None):
        variables = [SimpleNamespace(shape=a.shape, dtype=str(a.dtype), value=a) for a in arrays]
        super().__init__(None, variables, [])
        self.arrays, self.break_at, self.pending, self.drains = arrays, break_at, [], 0

    def read(self, step, with_checksums):
        sums = checksums_numpy(self.arrays).astype(np.int64) if with_checksums else None
        self.pending.append((step, sums))

    def drain(self):
        self.drains += 1
        if self.drains == self.break_at:
            raise RuntimeError("the device went away")
        pending, self.pending = self.pending, []
        checksums = np.stack([s if s is not None else np.full(len(self.arrays), MISSING_CHECKSUM) for _, s in pending]) \
            if pending else np.zeros((0, len(self.arrays)), np.int64)
        return Rows(np.asarray([step for step, _ in pending], np.int64), np.zeros((len(pending), 0), np.float32), checksums)


class PointSink:
    def __init__(self):
        self.points = []

    def log_metrics(self, points, step, timestamp_ms=None):
        self.points += [(key, step) for key in points]

    def steps(self, key):
        return [step for k, step in self.points if k == key]


def _drive(recorder, device, record, steps, epoch_ends, change=None):
    """What the hooks do: the state of step s is read before step s + 1; logs filed; epochs end."""
    for step in range(1, steps + 1):
        if step > 1:
            recorder.step_done(step - 1)
            if recorder.drain_due:
                recorder.drain()
        device.arrays[0] += 0.5  # the step
        if change and step == change:
            device.arrays[1][0] += 1.0  # a callback's change between two steps
        record.set_metrics(step, 1, 0.0, {"train/loss": 1.0 / step})
        if step in epoch_ends:
            recorder.epoch_done(step)
            recorder.file_state(step, [a.copy() for a in device.arrays])


def test_the_recorder_files_every_step_and_a_change_between_steps_at_the_earlier_step(tmp_path):
    device = HostDevice([np.zeros(4, np.float32), np.ones(3, np.float32)])
    record, sink = StepRecord(), PointSink()
    recorder = FlightRecorder(device, record, sink, Budget(publish_every=1), 1, ["checksum/a", "checksum/b"])
    _drive(recorder, device, record, 40, {20, 40}, change=5)
    _, checksums = read_steps(record.write(tmp_path / keys.STEPS)).checksums()
    assert (checksums["a"] >= 0).all() and (checksums["b"] >= 0).all()  # every step
    b = checksums["b"]
    assert len(set(b[:4])) == 1 and b[4] != b[3] and len(set(b[4:])) == 1  # the change shows at step 5
    assert sink.steps("train/loss") == list(range(1, 41))


def test_a_forced_cadence_takes_checksums_on_its_steps_and_the_first_and_epoch_ends():
    device = HostDevice([np.zeros(4, np.float32)])
    record = StepRecord()
    recorder = FlightRecorder(device, record, PointSink(), Budget(checksum_every=4), 1, ["checksum/a"])
    _drive(recorder, device, record, 10, {10})
    taken = [i + 1 for i, value in enumerate(record.to_table().column("checksum/a").to_pylist()) if value is not None]
    assert taken == [1, 4, 8, 10] and record.checksum_every == 4


def test_a_later_fit_chooses_its_cadence_after_two_steps_when_the_cost_is_known():
    device = HostDevice([np.zeros(4, np.float32)])
    record = StepRecord()
    recorder = FlightRecorder(device, record, PointSink(), Budget(), 1, ["checksum/a"], prior_checksum_seconds=10.0)
    for step in (1, 2, 3):
        recorder.step_done(step)
        time.sleep(0.001)
    assert record.checksum_every == policy.MAX_CHECKSUM_EVERY  # ten seconds a checksum: as rare as can be
    assert device.checksum_every == record.checksum_every


def test_a_short_fit_keeps_every_step_checksummed_when_a_rise_would_not_pay_for_itself():
    device = HostDevice([np.zeros(4, np.float32)])
    device.records_in_step = True  # as on TensorFlow and JAX: a rise traces a second train function
    record = StepRecord()
    recorder = FlightRecorder(device, record, PointSink(), Budget(), 1, ["checksum/a"], prior_checksum_seconds=0.001,
                              planned_steps=20)
    time.sleep(0.5)  # the first step's call traced the train function
    for step in (1, 2, 3):
        recorder.step_done(step)
        time.sleep(0.002)
    assert record.checksum_every == 1  # at 50 % of a step, a rise would save 17 ms in all: less than 0.5 s


def test_when_the_device_fails_the_logs_are_still_filed_and_published():
    device = HostDevice([np.zeros(4, np.float32)], break_at=1)
    record, sink = StepRecord(), PointSink()
    recorder = FlightRecorder(device, record, sink, Budget(publish_every=1), 1, ["checksum/a"])
    for step in range(1, 41):
        if step > 1:
            recorder.step_done(step - 1)
            if recorder.drain_due:
                with pytest.raises(RuntimeError):
                    recorder.drain()
                recorder.drop_device()
                recorder.drain()
        record.set_metrics(step, 1, 0.0, {"train/loss": 1.0})
    recorder.epoch_done(40)
    recorder.file_state(40, None)
    assert sink.steps("train/loss") == list(range(1, 41))


def test_the_publishing_cadence_follows_what_the_sink_measured_once_its_first_batch_is_sent():
    def cadence(metrics_sent, send_seconds):
        device = HostDevice([np.zeros(4, np.float32)])
        record, sink = StepRecord(), PointSink()
        sink.stats = SinkStats(metrics_sent=metrics_sent, send_seconds=send_seconds)
        budget = Budget(share=0.5, checksum_every=1)
        recorder = FlightRecorder(device, record, sink, budget, 1, ["checksum/a"], planned_steps=64)
        for step in range(1, 34):
            record.set_metrics(step, 1, 0.0, {"train/loss": 1.0, "train/accuracy": 0.5})
            recorder.step_done(step)
            time.sleep(0.004)
        recorder.drain()
        return recorder.publish_every

    # Steps of at least 4 ms, 2 points a step, a budget of half the fit (wide, so that the recorder's own time
    # on a loaded machine cannot decide): at the prior (0.15 ms a point, 7.5 % of a step) every step or every
    # other; at 50 ms a point (25 steps' worth a step), every 16 steps or more, every 64 at 4 ms a step.
    assert cadence(0, 0.0) <= 2
    assert cadence(31, 31 * 0.05) <= 2  # fewer than 32 points sent: the prior still
    assert cadence(40, 40 * 0.05) >= 16  # a first batch measured: its cost


# The sink and the spool, against real stores.
def test_the_sink_sends_everything_in_batches_within_mlflows_limits(sqlite_uri, client):
    run_id = client.create_run(client.create_experiment("sink")).info.run_id
    sink = RunSink(sqlite_uri, run_id, flush_interval=0.05)
    for step in range(1, 1501):
        sink.log_metrics({"train/loss": float(step), "bn/x": 0.5}, step)
    sink.log_params({f"p{i}": i for i in range(150)})
    sink.set_tags({f"t{i}": "x" * 9000 for i in range(3)})
    stats = sink.close(30)
    assert stats.metrics_sent == 3000 and stats.metrics_spooled == 0 and not stats.errors
    run = client.get_run(run_id)
    assert len(run.data.params) == 150 and len(run.data.tags["t0"]) == 8000  # cut to MLflow's limit
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == list(range(1, 1501))


def _history(client, run_id, key, count, seconds=10.0):
    """The metric's history once it has ``count`` points, or when ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    while len(client.get_metric_history(run_id, key)) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return client.get_metric_history(run_id, key)


def test_the_sink_sends_points_every_interval_and_on_flush_files_at_once(tmp_path, sqlite_uri, client):
    run_id = client.create_run(client.create_experiment("pace")).info.run_id
    sink = RunSink(sqlite_uri, run_id, flush_interval=30.0)
    sink.log_metrics({"train/loss": 1.0}, 1)
    (tmp_path / "file.txt").write_text("now")
    sink.log_artifact(tmp_path / "file.txt", "layerprint")  # a file goes at once: it wakes the sender
    deadline = time.monotonic() + 10
    while not client.list_artifacts(run_id, "layerprint") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [f.path for f in client.list_artifacts(run_id, "layerprint")] == ["layerprint/file.txt"]
    assert client.get_metric_history(run_id, "train/loss") == []  # points wait for the interval (30 s)
    sink.log_metrics({"train/loss": 2.0}, 2)
    assert sink.flush(10)
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [1, 2]
    sink.close(5)
    paced = RunSink(sqlite_uri, run_id, flush_interval=0.2)
    paced.log_metrics({"train/loss": 3.0}, 3)
    assert [m.step for m in _history(client, run_id, "train/loss", 3)] == [1, 2, 3]  # within the interval
    paced.close(5)


def test_a_sink_creates_its_run_when_told_to_begin_or_after_its_wait_with_the_tags_queued_by_then(sqlite_uri,
                                                                                                  client):
    experiment_id = client.create_experiment("opening")
    created: list[float] = []

    def open_run(tags):
        created.append(time.monotonic())
        return client.create_run(experiment_id, tags=tags).info.run_id

    sink = RunSink(sqlite_uri, None, open_run=open_run, open_wait=30.0)
    sink.set_tags({"queued": "before"})
    time.sleep(0.5)
    assert not created  # waits for ``begin`` (the fit's first step), up to 30 s
    asked = time.monotonic()
    sink.begin()
    run_id = sink.opened_run_id(10)
    assert created and created[0] >= asked and run_id is not None
    assert client.get_run(run_id).data.tags["queued"] == "before"  # in the run's creation
    sink.close(5)
    started = time.monotonic()
    waited = RunSink(sqlite_uri, None, open_run=open_run, open_wait=0.3)
    assert waited.opened_run_id(None) is not None  # asking for the id creates the run at once
    assert len(created) == 2 and created[1] - started < 0.3
    waited.close(5)
    started = time.monotonic()
    timed = RunSink(sqlite_uri, None, open_run=open_run, open_wait=0.3)
    deadline = time.monotonic() + 10
    while len(created) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(created) == 3 and created[2] - started >= 0.3  # nobody said begin: created after its wait
    timed.close(5)


def test_a_server_that_dies_gets_nothing_lost_the_spool_replays_it_once(tmp_path, mlflow_server):
    client = MlflowClient(mlflow_server.uri)
    run_id = client.create_run(client.create_experiment("dies")).info.run_id
    sink = RunSink(mlflow_server.uri, run_id, flush_interval=0.05)
    sink.log_metrics({"m": 1.0}, 1)
    assert sink.flush(30)
    mlflow_server.kill()
    (tmp_path / "file.txt").write_text("kept")
    sink.log_metrics({"m": 2.0}, 2)
    sink.log_artifact(tmp_path / "file.txt", "layerprint")
    started = time.monotonic()
    stats = sink.close(3)
    sink.finish("FINISHED", 3)
    assert time.monotonic() - started < 20
    assert stats.metrics_spooled >= 1 and stats.artifacts_spooled == 1
    records = spool.read_records(spool.spool_root() / f"{run_id}.jsonl")
    assert {r["kind"] for r in records} == {"batch", "artifact", "terminate"}
    mlflow_server.start()
    for _ in range(2):  # twice: nothing lands twice
        result = spool.sync(mlflow_server.uri)
    assert result.runs == 0 and result.remaining == 0
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "m")] == [(1, 1.0), (2, 2.0)]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(run_id, "layerprint")] == ["layerprint/file.txt"]


def test_a_spooled_run_that_was_never_created_is_created_once(tmp_path, sqlite_uri, client):
    run_spool = spool.RunSpool("offline-abc", sqlite_uri)
    run_spool.create_run("replayed", "r", None)
    run_spool.batch([("m", 1.0, 1000, 1), ("m", 2.0, 1001, 2)], {"p": "1"}, {"t": "x"})
    run_spool.terminate("FAILED")
    created = spool.sync(sqlite_uri)
    assert (created.runs, created.metrics, created.remaining) == (1, 2, 0)
    (run,) = client.search_runs([client.get_experiment_by_name("replayed").experiment_id])
    assert run.info.status == "FAILED" and run.data.params == {"p": "1"} and run.data.tags["t"] == "x"
    assert spool.sync(sqlite_uri).runs == 0 and json.dumps(spool.entries(), default=str) == "[]"
