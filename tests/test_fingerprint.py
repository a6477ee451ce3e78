import json
import subprocess
import sys

import keras
import numpy as np

from layerprint.inspection.fingerprint import canonical_bytes_header, exact_hash, fingerprint_arrays, fingerprint_model, tolerant_hash


def _array():
    return np.random.default_rng(0).normal(size=(32, 16)).astype(np.float32)


def test_one_ulp_changes_exact_hash_but_not_tolerant():
    a = _array()
    b = a.copy()
    b[3, 5] = np.nextafter(b[3, 5], np.float32(np.inf))
    assert exact_hash(a) != exact_hash(b)
    assert tolerant_hash(a) == tolerant_hash(b)


def test_tolerant_hash_changes_for_a_real_change():
    a = _array()
    b = a.copy()
    b[0, 0] *= 1.01
    assert tolerant_hash(a) != tolerant_hash(b)


def test_tolerant_hash_of_an_array_of_many_chunks_is_the_documented_one():
    """The documented tolerant hash, computed over the whole array at once: float32, -0.0 as 0.0, rounded
    half up to bfloat16's bit pattern, every NaN as one, after the header ``bf16|<shape>|``."""
    import hashlib

    from layerprint.inspection.fingerprint import TOLERANT_CHUNK

    rng = np.random.default_rng(1)
    for dtype in ("float32", "float64", "float16"):
        a = rng.normal(size=(3, TOLERANT_CHUNK + 7)).astype(dtype)
        a[0, 5], a[2, -1], a[1, TOLERANT_CHUNK] = -0.0, np.copysign(np.nan, -1.0), np.inf  # a NaN of sign 1
        bits = (a.astype(np.float32).ravel() + np.float32(0.0)).view(np.uint32).astype(np.uint64)
        bf16 = ((bits + (1 << 15)) >> 16).astype("<u2")
        bf16[np.isnan(a.ravel())] = 0x7FC0
        expected = hashlib.sha256(f"bf16|3,{TOLERANT_CHUNK + 7}|".encode() + bf16.tobytes()).hexdigest()
        assert tolerant_hash(a) == expected, dtype


def test_canonical_bytes_include_dtype_and_shape():
    a = np.zeros((4, 4), np.float32)
    assert exact_hash(a) != exact_hash(a.reshape(2, 8))
    assert exact_hash(a) != exact_hash(a.astype(np.float64))
    assert canonical_bytes_header(a) == b"float32|4,4|"


def test_byte_order_does_not_change_the_hash():
    a = _array()
    assert exact_hash(a) == exact_hash(a.astype(">f4"))


def test_nan_weights_hash_deterministically():
    a = _array()
    a[1, 1] = np.nan
    b = a.copy()
    fp = fingerprint_arrays([("v", "l", a)])
    assert fp == fingerprint_arrays([("v", "l", b)])
    assert np.isfinite(fp["variables"][0]["l2_norm"])
    c = a.copy()
    c[1, 1] = np.float32(np.nan) + np.float32(1)  # another NaN payload, same tolerant hash
    assert tolerant_hash(a) == tolerant_hash(c)


def test_model_record_fields_and_sorting():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="b"), keras.layers.Dense(2, name="a")], name="m")
    fp = fingerprint_model(model)
    paths = [v["path"] for v in fp["variables"]]
    assert paths == sorted(paths) == ["a/bias", "a/kernel", "b/bias", "b/kernel"]  # root name left out
    record = fp["variables"][1]
    assert set(record) == {"path", "layer", "shape", "dtype", "sha256", "tolerant", "l2_norm"}
    assert record["layer"] == "a" and record["shape"] == [2, 2] and record["dtype"] == "float32"
    assert record["sha256"] == exact_hash(model.get_layer("a").kernel.numpy())


def test_large_models_hash_the_same_on_one_or_two_threads():
    arrays = [(f"v{i}", "l", np.random.default_rng(i).normal(size=(256, 512)).astype(np.float32)) for i in range(4)]
    parallel = fingerprint_arrays(arrays)  # 2 MiB: goes to the thread pool
    serial = {"variables": [
        {"path": p, "sha256": exact_hash(v), "tolerant": tolerant_hash(v)} for p, _, v in arrays]}
    assert [(r["sha256"], r["tolerant"]) for r in parallel["variables"]] == [
        (r["sha256"], r["tolerant"]) for r in serial["variables"]]


_CHILD = """
import os, json
os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
import keras
from layerprint.inspection.fingerprint import fingerprint_model
keras.utils.set_random_seed(11)
model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5), keras.layers.Dense(2)])
print(json.dumps(fingerprint_model(model)))
"""


def test_fingerprints_equal_across_processes_for_one_seed():
    outputs = [json.loads(subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True,
                                         check=True).stdout.strip().splitlines()[-1]) for _ in range(2)]
    assert outputs[0] == outputs[1]
    assert len(outputs[0]["variables"]) == 4


def test_same_seed_same_fingerprint_later_in_one_process():
    """RNG state variables carry a process-wide counter in their path; they must not reach the hash."""
    hashes = []
    for _ in range(2):
        keras.utils.set_random_seed(5)
        model = keras.Sequential([keras.Input((3, 4)), keras.layers.LSTM(2, dropout=0.1, name="l")], name="m")
        assert any("seed_generator" in v.path for v in model.variables)
        hashes.append(fingerprint_model(model)["model"])
    assert hashes[0] == hashes[1]


def test_the_same_sequential_model_built_twice_in_one_process_has_one_fingerprint():
    # Keras numbers the root name (sequential, sequential_1, ...) and puts it in the variable paths.
    fingerprints = []
    for _ in range(2):
        keras.utils.set_random_seed(11)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")])
        fingerprints.append(fingerprint_model(model))
    assert fingerprints[0]["model"] == fingerprints[1]["model"]
    assert [v["path"] for v in fingerprints[0]["variables"]] == ["d/bias", "d/kernel"]
