"""Names shared by the writers (callback, runner) and the readers (compare, claims).

Metric keys:
    ``train/<metric>``          per global step (step = optimizer steps done so far).
    ``epoch/<metric>``          per epoch, training metrics (step = epoch index).
    ``epoch/val_<metric>``      per epoch, validation metrics.
    ``bn/<layer path>/<stat>/<summary>``  BatchNorm moving statistics, at the publishing cadence;
                                ``<stat>`` is ``moving_mean`` or ``moving_variance`` and
                                ``<summary>`` one of ``mean``, ``std``, ``min``, ``max``.
    ``drift/<layer path>``      L2 distance of the layer's own variables from their initial
                                values, per epoch; ``drift/_model`` for the whole model.
    ``probe/output_norm``       L2 norm of the model output on the probe batch, per epoch.

``steps.parquet`` columns (every step; see ``recording.record``): ``step``, ``epoch``, ``time_ms``,
``train/<metric>``, ``bn/...`` as above, and ``checksum/<variable path>``.
"""

TAG_PARENT_RUN_ID = "mlflow.parentRunId"
TAG_NOTE = "mlflow.note.content"  # the run's markdown description, shown on its page in the MLflow UI
# MLflow 3's UI opens an experiment of this kind on its runs table, not on the GenAI overview page
TAG_EXPERIMENT_KIND, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
TAG_INIT_FINGERPRINT = "layerprint.init_fingerprint"
TAG_FINAL_FINGERPRINT = "layerprint.final_fingerprint"
TAG_INIT_TOLERANT = "layerprint.init_tolerant_fingerprint"
TAG_VARIANT = "layerprint.variant"
TAG_LAYER = "layerprint.layer"
TAG_SEED = "layerprint.seed"
TAG_MODEL_STYLE = "layerprint.model_style"
TAG_DETERMINISTIC = "layerprint.deterministic"
TAG_PROBE_FINGERPRINT = "layerprint.probe_fingerprint"
TAG_SYMMETRY_WARNING = "layerprint.symmetry_warning"
TAG_SWEEP_DIR = "layerprint.sweep_dir"
TAG_FAILURE = "layerprint.failure"
TAG_FAILED_JOBS = "layerprint.failed_jobs"
TAG_CALLBACK_ERROR = "layerprint.callback_error"
TAG_INIT_STEP = "layerprint.init_step"
TAG_LAST_STEP = "layerprint.last_step"
TAG_LAST_EPOCH = "layerprint.last_epoch"
TAG_FITS = "layerprint.fits"
TAG_CHECKSUM_EVERY = "layerprint.checksum_every"
TAG_PUBLISH_EVERY = "layerprint.publish_every"
TAG_PUBLISH_BN_EVERY = "layerprint.publish_bn_every"
TAG_VERSION_PREFIX = "layerprint.version."

ARTIFACT_DIR = "layerprint"
FINGERPRINTS_INITIAL = "fingerprints_initial.json"
FINGERPRINTS_FINAL = "fingerprints_final.json"
SHARING = "sharing.json"
BATCHNORM = "batchnorm.npz"
PROBE = "probe.json"
WEIGHTS_FINAL = "weights_final.npz"
STEPS = "steps.parquet"
LATER_FIT_DIR = "fit_{index}"  # artifacts a later fit in the same run takes at its start

STEP_PREFIX = "train/"
EPOCH_PREFIX = "epoch/"
BN_PREFIX = "bn/"
DRIFT_PREFIX = "drift/"
CHECKSUM_PREFIX = "checksum/"
DRIFT_MODEL = "drift/_model"
PROBE_NORM = "probe/output_norm"
BN_SUMMARIES = ("mean", "std", "min", "max")
BN_STATS = ("moving_mean", "moving_variance")


# A sweep parent's comparison as MLflow data (``analysis.publish``): one series or value per compared pair
# ``<run a>__<run b>``, and counts of the sweep.
GAP_PREFIX = "gap/"  # |loss_a - loss_b| at every step both runs logged
LOSSES_PART_PREFIX = "losses_part_at_step/"  # compare's first_divergence_step (logged at step 0)
WEIGHTS_PART_PREFIX = "weights_part_at_step/"  # compare's first_weight_divergence step (logged at step 0)
WEIGHTS_EQUAL_PREFIX = "weights_equal_until_step/"  # its last_equal_step: parted after it (logged at step 0)
SWEEP_RUNS = "sweep/runs"
SWEEP_INIT_GROUPS = "sweep/identical_init_groups"  # groups of 2+ runs that start bitwise identical
SWEEP_PAIRS_SHARING_INIT = "sweep/pairs_sharing_init"


def pair_key(prefix: str, run_a: str, run_b: str) -> str:
    """Key of one compared pair's metric, e.g. ``gap/copied-dense-s7__duplicated-dense-s7``."""
    return sanitize_key(f"{prefix}{run_a}__{run_b}")


def step_key(metric: str) -> str:
    """Key of a per-step training metric, e.g. ``train/loss``."""
    return STEP_PREFIX + metric


def epoch_key(metric: str) -> str:
    """Key of a per-epoch metric, e.g. ``epoch/loss`` or ``epoch/val_loss``."""
    return EPOCH_PREFIX + metric


def bn_key(layer_path: str, stat: str, summary: str) -> str:
    """Key of one BatchNorm moving-stat summary, e.g. ``bn/rep_0/moving_mean/std``."""
    return f"{BN_PREFIX}{layer_path}/{stat}/{summary}"


def checksum_key(variable_path: str) -> str:
    """Column of one variable's per-step checksum in ``steps.parquet``, e.g. ``checksum/rep_0/kernel``."""
    return CHECKSUM_PREFIX + variable_path


def drift_key(layer_path: str) -> str:
    """Key of one layer's weight drift from its initial weights, e.g. ``drift/rep_0``."""
    return DRIFT_PREFIX + layer_path


_ALLOWED_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-. /")


def sanitize_key(key: str) -> str:
    """Make a metric key MLflow accepts: characters outside ``[A-Za-z0-9_-. /]`` become ``_``,
    ``..`` path parts become ``__``, and keys are cut at 250 characters."""
    clean = "".join(c if c in _ALLOWED_KEY_CHARS else "_" for c in key)
    clean = "/".join("__" if part == ".." else part for part in clean.split("/"))
    return clean[:250]
