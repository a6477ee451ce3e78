"""One checksum definition: every backend's compiled kernel equals the NumPy reference bit for bit, for every
dtype width (8, 16, 32 and 64 bits), JAX with ``jax_enable_x64`` too."""

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.processes import run_on_backend

from layerprint.recording.checksum import HOST_CHUNK, checksum_numpy, checksums_host, checksums_tensorflow, words_numpy

DTYPES = ["bool", "int8", "uint8", "int16", "float16", "bfloat16", "int32", "float32", "int64", "float64"]


def _values(dtype, seed=0):
    """Values that use every bit of the type: random words, as ``dtype``."""
    import ml_dtypes

    rng = np.random.default_rng(seed)
    if dtype == "bool":
        return rng.integers(0, 2, size=(5, 7)).astype(bool)
    numpy_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    width = np.dtype(numpy_dtype).itemsize
    raw = rng.integers(0, 256, size=(5, 7, width), dtype=np.uint8).tobytes()
    values = np.frombuffer(raw, dtype=numpy_dtype).reshape(5, 7).copy()
    if np.issubdtype(values.dtype, np.floating) or dtype == "bfloat16":
        with np.errstate(invalid="ignore"):
            values[~np.isfinite(values.astype(np.float64))] = 1.5  # NaN payloads may not survive a backend's copy
    return values


def test_the_reference_reads_every_width_as_documented():
    assert list(words_numpy(np.array([1, 2], np.int8))) == [1, 2]
    assert list(words_numpy(np.array([-1], np.int8))) == [255]
    assert list(words_numpy(np.array([-1], np.int16))) == [0xFFFF]
    assert list(words_numpy(np.array([1.0], np.float64))) == [0, 0x3FF00000]  # the low word first
    assert checksum_numpy(np.array([3, 5], np.uint32)) == 3 * 1 + 5 * 3


@pytest.mark.parametrize("dtype", DTYPES)
def test_tensorflow_kernel_equals_the_reference(dtype):
    import tensorflow as tf

    values = _values(dtype)
    tensor = tf.constant(values) if dtype != "bfloat16" else tf.cast(tf.constant(values.astype(np.float32)), tf.bfloat16)
    got = int(tf.function(checksums_tensorflow, autograph=False)([tensor]).numpy()[0])
    assert got == checksum_numpy(values)


def test_tensorflow_kernel_equals_the_reference_for_small_large_and_empty_arrays_of_every_width_in_one_call():
    """Small arrays of one shape and dtype are stacked and summed together, large ones where they lie (in
    rows, whose weights wrap modulo 2**32), and the checksums come back in the arrays' order, whatever the
    mix."""
    import tensorflow as tf

    from layerprint.recording.checksum import STACK_BELOW_WORDS

    rng = np.random.default_rng(2)
    arrays = [_values(dtype, seed) for seed, dtype in enumerate(DTYPES)]
    arrays[3:3] = [np.asarray(rng.normal(size=(STACK_BELOW_WORDS // 64, 64)), np.float32),  # large, 2-D
                   np.zeros((0, 3), np.float32),
                   rng.integers(0, 1 << 62, size=STACK_BELOW_WORDS // 2, dtype=np.int64),  # large: two words a value
                   np.asarray(rng.normal(size=(7,)), np.float32),
                   np.asarray(rng.normal(size=(3, 3, 64, 64)), np.float32),  # large, summed by rows of 4,096 words
                   rng.integers(-(1 << 62), 1 << 62, size=(300, 256), dtype=np.int64)]  # rows of 512 words
    arrays.append(_values("float32", seed=11))  # the shape and dtype of an earlier one: stacked with it
    tensors = [tf.cast(tf.constant(a.astype(np.float32)), tf.bfloat16) if a.dtype.name == "bfloat16" else tf.constant(a)
               for a in arrays]
    got = tf.function(checksums_tensorflow, autograph=False)(tensors).numpy()
    assert [int(c) for c in got] == [checksum_numpy(a) for a in arrays]


def test_one_changed_bit_in_any_word_changes_the_checksum():
    values = _values("float64")
    base = checksum_numpy(values)
    for word in range(values.size * 2):
        for bit in (0, 13, 31):
            changed = values.copy()
            changed.view(np.uint32).reshape(-1)[word] ^= np.uint32(1 << bit)
            assert checksum_numpy(changed) != base, (word, bit)


_ON_BACKEND = """
import json, sys
sys.path.insert(0, sys.argv[1])
import numpy as np
from test_checksum import DTYPES, _values
from layerprint.recording.checksum import checksum_numpy
backend = sys.argv[2]
out = {}
if backend == "jax":
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from layerprint.recording.checksum import checksums_jax
    kernel = jax.jit(checksums_jax)
    for dtype in DTYPES:
        values = _values(dtype)
        array = jnp.asarray(values)
        assert str(array.dtype) == str(values.dtype), (dtype, array.dtype)
        out[dtype] = [int(np.asarray(kernel([array]))[0]), checksum_numpy(values)]
    arrays = [jnp.asarray(_values(dtype)) for dtype in DTYPES] + [jnp.zeros((0, 3), jnp.float32)]
    out["every width in one call"] = [[int(c) for c in np.asarray(kernel(arrays))],
                                      [checksum_numpy(np.asarray(a)) for a in arrays]]
else:
    import torch
    from layerprint.recording.checksum import checksums_torch, checksums_torch_ops
    # the host kernel (NumPy on the tensors' memory) and the GPU's (PyTorch operations, run here on the CPU)
    for name, kernel in (("host", checksums_torch), ("ops", checksums_torch_ops)):
        for dtype in DTYPES:
            values = _values(dtype)
            tensor = (torch.from_numpy(values.view(np.int16)).view(torch.bfloat16) if dtype == "bfloat16"
                      else torch.from_numpy(values))
            out[f"{name} {dtype}"] = [int(kernel([tensor])[0]), checksum_numpy(values)]
            out[f"{name} {dtype} transposed"] = [int(kernel([tensor.T])[0]),  # not contiguous
                                                 checksum_numpy(np.ascontiguousarray(values.T))]
        tensors = [torch.from_numpy(_values(dtype)) for dtype in DTYPES if dtype != "bfloat16"]
        tensors[1:1] = [torch.zeros((0, 3)), torch.from_numpy(_values("bfloat16").view(np.int16)).view(torch.bfloat16)]
        out[f"{name} every width in one call"] = [
            [int(c) for c in kernel(tensors)],
            [checksum_numpy(t.view(torch.int16).numpy() if t.dtype == torch.bfloat16 else t.numpy()) for t in tensors]]
print(json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_jax_and_torch_kernels_equal_the_reference(backend):
    done = run_on_backend(backend, _ON_BACKEND, str(Path(__file__).parent), backend)
    for dtype, (got, expected) in json.loads(done.stdout.strip().splitlines()[-1]).items():
        assert got == expected, (backend, dtype)


def test_the_host_kernel_equals_the_reference_for_small_large_and_empty_arrays_of_every_width():
    import ml_dtypes

    rng = np.random.default_rng(1)
    arrays = [_values(dtype, seed) for seed, dtype in enumerate(DTYPES)]
    for dtype, count in (("float32", 3 * HOST_CHUNK + 5), ("float64", HOST_CHUNK), ("int8", 2 * HOST_CHUNK + 1),
                         ("float16", HOST_CHUNK + 7)):
        arrays.append(rng.integers(0, 1 << 62, size=count, dtype=np.int64).view(np.uint8)[: count * np.dtype(dtype).itemsize]
                      .view(dtype))
    arrays += [np.zeros((0, 4), np.float32), np.asarray(rng.normal(size=(300, 301)), np.float32).T,  # not contiguous
               np.ones(HOST_CHUNK - 1, ml_dtypes.bfloat16)]
    assert [int(c) for c in checksums_host(arrays)] == [checksum_numpy(a) for a in arrays]
