"""Fingerprints of weights: exact and float-noise-tolerant hashes of every variable.

``sha256`` is over the variable's canonical bytes: a header ``"<dtype>|<shape>|"`` (NumPy dtype
name, shape as comma-separated ints) followed by the values as little-endian, C-order bytes. It
changes when any bit of any value changes.

``tolerant`` is a SHA-256 over the values cast to float32 and rounded to bfloat16
(``TOLERANT_MANTISSA_BITS`` = 7 mantissa bits, round half up on the bit pattern, the full float32
exponent range), with ``-0.0`` folded into ``0.0`` and every NaN into one NaN. Two arrays whose values
differ by less than a relative ``2**-9`` (about 0.2 %) hash equal, except when a value lies within
that noise of a rounding boundary: a perturbation of relative size ``e`` flips a given value's rounding
with probability about ``e * 2**7`` (one float32 ULP, ``2**-23``: 1.5e-5 per value). The header holds
the shape only, so a float32 and a float16 copy of the same values can compare tolerant-equal.

Keras ``SeedGenerator`` state variables (``.../seed_generator_state``, the RNG of dropout in
recurrent layers) are not weights and are left out: their paths carry a process-wide counter
(``seed_generator_3``), so the same model built later in one process would hash differently.

The model fingerprint is a SHA-256 over ``"<path>:<sha256>\\n"`` of every variable, sorted by path.
Paths are relative to the model: the root model's own name, which Keras numbers per process
(``sequential_3/...``), is left out (``root_prefix``).
"""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable

import numpy as np

from layerprint.inspection.paths import owning_layer_path, unique_variables, variable_paths

TOLERANT_MANTISSA_BITS = 7
_F32_DROP_BITS = 23 - TOLERANT_MANTISSA_BITS  # 16: what is left is a bfloat16 bit pattern
_F32_ROUND = np.uint32(1 << (_F32_DROP_BITS - 1))
_BF16_CANONICAL_NAN = np.uint16(0x7FC0)
# Hashing and NumPy release the GIL on large buffers: the caller's thread and this pool's one use both
# cores of a small machine.
_HASH_THREADS = 1
_PARALLEL_MIN_BYTES = 1 << 20
TOLERANT_CHUNK = 1 << 16  # values ``tolerant_hash`` rounds at a time: 384 KiB of scratch buffers
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
# Reusable scratch buffers per thread: fresh ones cost a page fault per 4 KiB.
_scratch_buffers = threading.local()


def _hash_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(_HASH_THREADS, thread_name_prefix="layerprint-hash")
        return _pool


def _scratch(dtype: Any, size: int, name: str) -> np.ndarray:
    buffer = getattr(_scratch_buffers, name, None)
    if buffer is None or buffer.size < size:
        buffer = np.empty(size, dtype=dtype)
        setattr(_scratch_buffers, name, buffer)
    return buffer[:size]


def canonical_bytes_header(array: np.ndarray) -> bytes:
    """The header hashed before the values: dtype name and shape."""
    return f"{array.dtype.name}|{','.join(str(d) for d in array.shape)}|".encode()


def exact_hash(array: np.ndarray) -> str:
    """SHA-256 of the canonical bytes (dtype and shape header, little-endian C-order values).

    Args:
        array: any NumPy array.

    Returns:
        The hex digest.
    """
    values = np.ascontiguousarray(array)
    values = values.astype(values.dtype.newbyteorder("<"), copy=False)
    digest = hashlib.sha256(canonical_bytes_header(values))
    digest.update(memoryview(values).cast("B") if values.size else b"")
    return digest.hexdigest()


def tolerant_hash(array: np.ndarray, has_non_finite: bool | None = None) -> str:
    """SHA-256 of the values rounded to ``TOLERANT_MANTISSA_BITS`` mantissa bits (see module doc).

    Args:
        array: any NumPy array; non-float arrays are hashed exactly.
        has_non_finite: whether the array may hold NaN, if the caller knows (saves a pass).

    Returns:
        The hex digest.
    """
    shape_header = f"{','.join(str(d) for d in array.shape)}|".encode()
    if not np.issubdtype(array.dtype, np.floating):
        return hashlib.sha256(b"exact|" + shape_header + exact_hash(array).encode()).hexdigest()
    # A chunk at a time, in scratch buffers that stay in the cache (20 % faster than whole-array passes): adding
    # +0.0 folds -0.0 into 0.0 in the float32 buffer, which is rounded in place, then narrowed to bfloat16 bits.
    flat = array.ravel()
    size = min(TOLERANT_CHUNK, flat.size)
    values, rounded = _scratch(np.float32, size, "float_buffer"), _scratch(np.dtype("<u2"), size, "bf16_buffer")
    digest = hashlib.sha256(b"bf16|" + shape_header)
    for begin in range(0, flat.size, TOLERANT_CHUNK):
        end = min(begin + TOLERANT_CHUNK, flat.size)
        chunk, narrow = values[: end - begin], rounded[: end - begin]
        np.add(flat[begin:end], np.float32(0.0), out=chunk, casting="unsafe")
        bits = chunk.view(np.uint32)
        bits += _F32_ROUND  # Inf stays Inf; only a finite value next to the float32 maximum rounds to Inf
        bits >>= np.uint32(_F32_DROP_BITS)
        np.copyto(narrow, bits, casting="unsafe")
        if has_non_finite is None or has_non_finite:
            narrow[np.isnan(flat[begin:end])] = _BF16_CANONICAL_NAN
        digest.update(memoryview(narrow).cast("B"))
    return digest.hexdigest()


def model_hash(variable_hashes: Iterable[tuple[str, str]]) -> str:
    """One hash over ``(path, hash)`` pairs, sorted by path."""
    digest = hashlib.sha256()
    for path, value_hash in sorted(variable_hashes):
        digest.update(f"{path}:{value_hash}\n".encode())
    return digest.hexdigest()


def l2_norm(values: np.ndarray) -> float:
    """L2 norm over the finite values (NaN and Inf are left out, so the norm stays a number)."""
    flat = values.ravel()
    if not np.issubdtype(flat.dtype, np.floating):
        flat = flat.astype(np.float64)
    norm = float(np.linalg.norm(flat))
    if not np.isfinite(norm):
        norm = float(np.linalg.norm(flat[np.isfinite(flat)].astype(np.float64)))
    return norm


def variables_as_numpy(model: Any) -> list[tuple[str, str, np.ndarray]]:
    """``(path, layer, values)`` for every variable of ``model``, each once, in the model's order;
    paths are relative to the model (see ``root_prefix``)."""
    paths = variable_paths(model)
    return [
        (paths[id(v)], owning_layer_path(paths[id(v)]), np.asarray(v.numpy())) for v in unique_variables(model)
    ]


def _records(arrays: list[tuple[str, str, np.ndarray]]) -> list[dict[str, Any]]:
    """One record per array. With enough data to share, the exact hashes go to one thread and the
    tolerant ones to another (hashlib and NumPy release the GIL on large buffers): two hand-offs in
    all, since one per array would wait on the GIL for every small array when another Python thread
    is busy (0.6 s instead of 20 ms for MobileNetV2's 262 arrays beside a sending sink)."""
    norms = [l2_norm(values) for _, _, values in arrays]

    def exact_hashes() -> list[str]:
        return [exact_hash(values) for _, _, values in arrays]

    def tolerant_hashes() -> list[str]:
        return [tolerant_hash(values, not np.isfinite(norm)) for (_, _, values), norm in zip(arrays, norms)]

    if len(arrays) > 1 and sum(values.nbytes for _, _, values in arrays) >= _PARALLEL_MIN_BYTES:
        tolerant = _hash_pool().submit(tolerant_hashes)
        exact = exact_hashes()
        hashes = [h for pair in zip(exact, tolerant.result()) for h in pair]
    else:
        hashes = [h for pair in zip(exact_hashes(), tolerant_hashes()) for h in pair]
    records = [
        {
            "path": path,
            "layer": layer,
            "shape": list(values.shape),
            "dtype": values.dtype.name,
            "sha256": hashes[2 * i],
            "tolerant": hashes[2 * i + 1],
            "l2_norm": norms[i],
        }
        for i, (path, layer, values) in enumerate(arrays)
    ]
    return sorted(records, key=lambda record: record["path"])


def _summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "model": model_hash((r["path"], r["sha256"]) for r in records),
        "tolerant": model_hash((r["path"], r["tolerant"]) for r in records),
        "variables": records,
    }


def fingerprint_arrays(arrays: list[tuple[str, str, np.ndarray]]) -> dict[str, Any]:
    """Fingerprint named arrays.

    Args:
        arrays: ``(path, layer, values)`` triples.

    Returns:
        ``{"model": HASH, "tolerant": HASH, "variables": [record, ...]}``, records sorted by path,
        each ``{"path", "layer", "shape", "dtype", "sha256", "tolerant", "l2_norm"}``.
    """
    return _summary(_records(arrays))


def fingerprint_model(model: Any) -> dict[str, Any]:
    """Fingerprint every variable of a Keras model (or layer).

    Args:
        model: a built Keras model or layer.

    Returns:
        See ``fingerprint_arrays``.

    Example:

    >>> fp = fingerprint_model(model)
    >>> fp["model"], fp["variables"][0]["path"]
    """
    return fingerprint_arrays(variables_as_numpy(model))
