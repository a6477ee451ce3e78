"""The checksum of a variable's values: one definition, a NumPy reference, and a compiled kernel per backend.

**Definition.** A variable's values, in C order, seen as 32-bit words ``w_0 .. w_{n-1}``: 4-byte types
(float32, int32) as themselves; 2-byte types (float16, bfloat16, int16) and 1-byte types (int8, uint8,
bool) widened, their bits unchanged in the low bits; 8-byte types (float64, int64) as two words each, the
low word first (their little-endian bytes). Then

    ``checksum = sum_i w_i * (2i + 1) mod 2**32``

in unsigned 32-bit arithmetic, which wraps by definition. Integer addition is associative, so the result
does not depend on the order of the reduction (device, thread count): the same bits give the same checksum
on every machine. A single changed bit changes it: a word's change of ``2**k`` changes its term by
``2**k * (2i + 1)``, an odd multiple of ``2**k``, never 0 modulo 2**32. Several changed values give the
same checksum only when their term changes cancel exactly modulo 2**32: for unrelated changes, about 1 in
4.3e9. Two values ``a``, ``b`` trading places at ``i``, ``j`` cancel only when ``2 (a - b)(i - j)`` is a
multiple of 2**32. It is a change detector, not a cryptographic hash.

``checksum_numpy`` is the reference; each backend's kernel (``checksums_tensorflow``, ``checksums_jax``,
``checksums_torch``: ``checksums_words`` on the host, ``checksums_torch_ops`` on a GPU) computes every variable's checksum in one compiled call and is tested bit for bit
against the reference for every dtype width, on every backend (``tests/test_checksum.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

WORD_BITS = 32
STACK_BELOW_WORDS = 1 << 15  # ``checksums_tensorflow``: larger arrays are not copied into a stack
ROW_WORDS = 256  # ``checksums_tensorflow``: a large array's words a row, at least (as its shape allows)
HOST_CHUNK = 1 << 18  # ``checksums_words``: words a step, for arrays of this size or more (1 MB: fewer hand-offs of the GIL)
_HOST_BITS = {8: np.uint32, 4: np.uint32, 2: np.uint16, 1: np.uint8}


def words_numpy(values: np.ndarray) -> np.ndarray:
    """The 32-bit words of an array (module doc), as ``uint32``."""
    flat = np.ascontiguousarray(values).ravel()
    size = flat.dtype.itemsize
    if size == 4:
        return flat.view(np.uint32)
    if size == 8:
        return flat.view("<u4")
    if size == 2:
        return flat.view(np.uint16).astype(np.uint32)
    return flat.view(np.uint8).astype(np.uint32)


def word_count(shape: Any, itemsize: int) -> int:
    """How many 32-bit words an array of ``shape`` and ``itemsize`` bytes per value has."""
    size = int(np.prod(shape))
    return size * 2 if itemsize == 8 else size


def checksum_numpy(values: np.ndarray) -> int:
    """The checksum of one array (module doc), on the host: the reference every kernel matches."""
    words = words_numpy(values)
    odd = np.arange(words.size, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    return int(np.sum(words * odd, dtype=np.uint32))


def checksums_numpy(arrays: list[np.ndarray]) -> np.ndarray:
    """Every array's checksum, as ``uint32``."""
    return np.asarray([checksum_numpy(np.asarray(a)) for a in arrays], dtype=np.uint32)


def checksums_tensorflow(arrays: list[Any]) -> Any:
    """Every array's checksum as one ``uint32`` vector, as TensorFlow ops (traced into a ``tf.function``).

    The words are taken as ``int32`` (the same bits: products and sums modulo 2**32 do not depend on the
    sign), and each sum of products is one matrix product, which writes no temporary the size of the words.
    Small arrays of one shape and dtype are stacked and summed together, ``(arrays, words)`` times the column
    ``2i + 1`` (a deep model repeats its shapes: the traced graph holds a few ops a shape, not a few ops a
    variable, and TensorFlow keeps every graph it traces for the life of the process); arrays of
    ``STACK_BELOW_WORDS`` words or more are summed where they lie (stacking copies them: for ResNet50, 15 ms
    a step instead of 10), by rows (``_tensorflow_checksum_by_rows``)."""
    import tensorflow as tf

    if not arrays:
        return tf.zeros((0,), tf.uint32)
    groups: dict[tuple[Any, ...], list[int]] = {}
    for index, array in enumerate(arrays):
        alone = word_count(array.shape, array.dtype.size) >= STACK_BELOW_WORDS
        groups.setdefault((tuple(array.shape), array.dtype, index if alone else None), []).append(index)
    sums, order = [], []
    for (shape, dtype, alone), members in groups.items():
        count = word_count(shape, dtype.size)
        if alone is not None:
            sums.append(_tensorflow_checksum_by_rows(tf, arrays[alone], shape, dtype.size))
        else:
            stacked = tf.stack([arrays[i] for i in members]) if len(members) > 1 else arrays[members[0]]
            words = tf.reshape(_tensorflow_words(tf, stacked), [len(members), count])  # each array's words in C order
            odd = _as_int32(2 * np.arange(count, dtype=np.int64) + 1)[:, None]
            sums.append(tf.reshape(tf.matmul(words, tf.constant(odd)), [len(members)]))
        order += members
    checksums = tf.concat(sums, 0) if len(sums) > 1 else sums[0]
    if order != sorted(order):
        position = [0] * len(arrays)
        for slot, index in enumerate(order):
            position[index] = slot
        checksums = tf.gather(checksums, position)
    return tf.bitcast(checksums, tf.uint32)


def _tensorflow_checksum_by_rows(tf: Any, array: Any, shape: tuple[int, ...], itemsize: int) -> Any:
    """One large array's checksum (a 1-vector, ``int32``), in one pass over its words.

    The words are laid out as ``R`` rows of ``k`` (``k``: the words of the trailing dimensions, at least
    ``ROW_WORDS`` where the shape allows), and one matrix product with the columns ``1`` and ``2c + 1`` gives
    each row's sum ``S_r`` and weighted sum ``T_r``; a word at row ``r``, column ``c`` is word ``i = r k +
    c``, whose weight is ``2i + 1 = 2 r k + (2c + 1)``, so the checksum is ``sum_r 2 r k S_r + T_r``. A
    product and a sum (``words * odd``, then ``reduce_sum``) wrote a temporary the size of the array and
    read it again: ResNet50's step with checksums took 22 ms more than its own, now 7 to 14."""
    count = word_count(shape, itemsize)
    row = 1
    for size in reversed(shape):
        if row >= ROW_WORDS:
            break
        row *= int(size)
    row = min(word_count((row,), itemsize), count)
    rows = count // row
    words = tf.reshape(_tensorflow_words(tf, array), [rows, row])
    columns = np.stack([np.ones(row, np.int64), 2 * np.arange(row, dtype=np.int64) + 1], 1)
    row_weights = 2 * np.arange(rows, dtype=np.int64) * row
    sums = tf.matmul(words, tf.constant(_as_int32(columns)))  # (rows, 2): S_r, T_r, modulo 2**32
    return tf.reshape(tf.reduce_sum(tf.constant(_as_int32(row_weights)) * sums[:, 0] + sums[:, 1]), [1])


def _as_int32(values: np.ndarray) -> np.ndarray:
    """Integers modulo 2**32, as the ``int32`` of the same bits."""
    return (values % (1 << WORD_BITS)).astype(np.uint32).view(np.int32)


def _tensorflow_words(tf: Any, array: Any) -> Any:
    """An array's words (module doc) in C order, as ``int32`` of the same bits."""
    flat = tf.reshape(array, [-1])
    size = flat.dtype.size
    if flat.dtype == tf.bool:
        return tf.cast(flat, tf.int32)
    if size == 4:
        return tf.bitcast(flat, tf.int32) if flat.dtype != tf.int32 else flat
    if size == 8:
        return tf.reshape(tf.bitcast(flat, tf.int32), [-1])  # (n, 2): the low word first on little-endian hosts
    if size == 2:
        return tf.cast(tf.bitcast(flat, tf.uint16), tf.int32)
    return tf.cast(tf.bitcast(flat, tf.uint8), tf.int32)


def checksums_jax(arrays: list[Any]) -> Any:
    """Every array's checksum as one ``uint32`` vector, as JAX operations (traced into a ``jax.jit``)."""
    import jax.numpy as jnp

    if not arrays:
        return jnp.zeros((0,), jnp.uint32)
    return jnp.stack([jnp.sum(words * (jnp.arange(words.size, dtype=jnp.uint32) * 2 + 1), dtype=jnp.uint32)
                      for words in (_jax_words(a) for a in arrays)])


def _jax_words(array: Any) -> Any:
    import jax
    import jax.numpy as jnp

    flat = jnp.ravel(array)
    if flat.dtype == jnp.bool_:
        return flat.astype(jnp.uint32)
    size = flat.dtype.itemsize
    if size == 4:
        return jax.lax.bitcast_convert_type(flat, jnp.uint32)
    if size == 8:  # two words per value (jax_enable_x64): the low word first, as NumPy's little-endian view
        return jnp.ravel(jax.lax.bitcast_convert_type(flat, jnp.uint32))
    if size == 2:
        return jax.lax.bitcast_convert_type(flat, jnp.uint16).astype(jnp.uint32)
    return jax.lax.bitcast_convert_type(flat, jnp.uint8).astype(jnp.uint32)


def checksums_host(arrays: list[np.ndarray]) -> np.ndarray:
    """Every array's checksum as one ``uint32`` vector, fast on the host (``checksums_words``)."""
    return checksums_words([host_bits(np.asarray(array)) for array in arrays])


def host_bits(values: np.ndarray) -> np.ndarray:
    """An array's bits as a flat view of its words before widening: ``uint32`` for 4- and 8-byte types (an
    8-byte value is two of them, the low one first), ``uint16``, ``uint8``."""
    flat = np.ascontiguousarray(values).reshape(-1)
    return flat.view(_HOST_BITS[flat.dtype.itemsize])


def checksums_words(bits: list[np.ndarray]) -> np.ndarray:
    """Every array's checksum as one ``uint32`` vector, from the flat views of its words' bits
    (``host_bits``), in ``uint32`` arithmetic, which wraps modulo 2**32.

    Arrays under ``HOST_CHUNK`` words, in a number of NumPy operations that does not grow with their number:
    the arrays whose words have one width are concatenated and their words numbered from the start of the
    concatenation, ``g = offset + i``; the segmented sums of ``w_g`` and of ``w_g * (2g + 1)`` give each
    array's ``sum_i w_i * (2i + 1) = S1 - 2 * offset * S0``. Larger arrays, ``HOST_CHUNK`` words at a time,
    by the same identity, in buffers that stay in the cache (no temporary the size of the array)."""
    out = np.zeros((len(bits),), np.uint32)
    groups: dict[Any, list[int]] = {}
    large = []
    for index, flat in enumerate(bits):
        if flat.size >= HOST_CHUNK:
            large.append(index)
        elif flat.size:  # an empty array's checksum is 0
            groups.setdefault(flat.dtype, []).append(index)
    for members in groups.values():
        words = np.concatenate([bits[i] for i in members]).astype(np.uint32)  # a copy: multiplied in place below
        sizes = np.asarray([bits[i].size for i in members], np.int64)
        starts = np.cumsum(sizes) - sizes
        plain = np.add.reduceat(words, starts, dtype=np.uint32)
        np.multiply(words, _odd_numbers(words.size), out=words)
        weighted = np.add.reduceat(words, starts, dtype=np.uint32)
        out[members] = weighted - np.uint32(2) * starts.astype(np.uint32) * plain
    if large:
        odd, buffer = _odd_numbers(HOST_CHUNK), np.empty(HOST_CHUNK, np.uint32)
        for index in large:
            flat, total = bits[index], 0
            for begin in range(0, flat.size, HOST_CHUNK):
                words = flat[begin:begin + HOST_CHUNK]
                products = buffer[: words.size]
                np.multiply(words, odd[: words.size], out=products)
                total += int(products.sum(dtype=np.uint32)) + 2 * begin * int(words.sum(dtype=np.uint32))
            out[index] = total % (1 << WORD_BITS)
    return out


def _odd_numbers(count: int) -> np.ndarray:
    """``2i + 1`` for ``i < count``, as ``uint32``."""
    odd = np.arange(count, dtype=np.uint32)
    odd *= np.uint32(2)
    odd += np.uint32(1)
    return odd


def checksums_torch(arrays: list[Any]) -> Any:
    """Every array's checksum as one ``int64`` vector, in a number of operations that does not grow with the
    number of arrays.

    On the host, NumPy reads the tensors' memory in place (``checksums_words``); on a GPU, PyTorch operations
    queued on the device (``checksums_torch_ops``)."""
    import torch

    if arrays and arrays[0].device.type == "cpu":
        return torch.from_numpy(checksums_words([_host_bits(torch, array) for array in arrays]).astype(np.int64))
    return checksums_torch_ops(arrays)


def checksums_torch_ops(arrays: list[Any]) -> Any:
    """Every array's checksum as one ``int64`` vector, as PyTorch operations on the arrays' device.

    The arrays whose words have one width are concatenated (as views of their bits), and two running sums,
    of ``w_g`` and of ``w_g * (2g + 1)``, give each array's sums from their values at its ends
    (``checksums_words``). PyTorch has no unsigned 32-bit arithmetic: the products and sums are ``int64`` and
    wrap modulo 2**64, whose low 32 bits are the ones modulo 2**32."""
    import torch

    if not arrays:
        return torch.zeros((0,), dtype=torch.int64)
    device = arrays[0].device
    views = [_torch_bits(torch, array) for array in arrays]
    groups: dict[Any, list[int]] = {}
    for index, view in enumerate(views):
        groups.setdefault(view.dtype, []).append(index)
    out = torch.zeros((len(arrays),), dtype=torch.int64, device=device)
    for members in groups.values():
        words = _torch_words(torch, torch.cat([views[i] for i in members]))
        counts = torch.tensor([views[i].numel() for i in members], dtype=torch.int64, device=device)
        ends = torch.cumsum(counts, 0)
        starts = ends - counts
        numbers = torch.arange(words.numel(), dtype=torch.int64, device=device)
        zero = torch.zeros((1,), dtype=torch.int64, device=device)
        weighted = torch.cat([zero, torch.cumsum(words * (numbers * 2 + 1), 0)])
        plain = torch.cat([zero, torch.cumsum(words, 0)])
        sums = (weighted[ends] - weighted[starts]) - 2 * starts * (plain[ends] - plain[starts])
        out[torch.tensor(members, dtype=torch.int64, device=device)] = sums & ((1 << WORD_BITS) - 1)
    return out


def _host_bits(torch: Any, array: Any) -> np.ndarray:
    """A host tensor's bits as a flat NumPy view of its words before widening (``host_bits``, read in place:
    NumPy's operations cost a fraction of PyTorch's dispatch on small arrays)."""
    tensor = array.detach()
    try:
        return host_bits(tensor.numpy())
    except TypeError:  # a dtype NumPy lacks (bfloat16, float8): its bits as an integer of its width
        return host_bits(tensor.view({2: torch.int16, 1: torch.uint8}[tensor.element_size()]).numpy())


def _torch_bits(torch: Any, array: Any) -> Any:
    """The array's bits as a flat view whose elements are its words before widening: ``int32`` for 4- and
    8-byte types (an 8-byte value is two of them, the low one first), ``int16``, ``uint8``, ``bool``."""
    flat = array.detach().contiguous().reshape(-1)
    if flat.dtype == torch.bool:
        return flat
    return flat.view({8: torch.int32, 4: torch.int32, 2: torch.int16, 1: torch.uint8}[flat.element_size()])


def _torch_words(torch: Any, bits: Any) -> Any:
    """``_torch_bits`` views, concatenated, as ``int64`` words (the bits unchanged in the low bits)."""
    words = bits.to(torch.int64)
    if bits.dtype == torch.int32:
        return words & ((1 << WORD_BITS) - 1)
    if bits.dtype == torch.int16:
        return words & 0xFFFF
    return words
