"""Text normalisation, word hashing and content hashes, shared by exact and near-duplicate detection.

Two documents are compared on their *normalised* text: lower case, every run of digits replaced by a
single `0`, every run of characters that are not letters, combining marks or numbers (punctuation,
symbols, whitespace, `_`) replaced by one space, no leading or trailing space. So "The 1916 election,"
and "the 1924 Election" normalise alike, and re-wrapped or re-punctuated copies hash equal.

Why Arrow compute and not Python `re`: the same normalisation written with `re` costs about 300 µs
per 3.5 kB document, more than the MinHash itself; Arrow's RE2 kernels do a whole batch in C++ at about
a third of that. There is a single implementation (the batch one); `normalize_text` runs it on a
one-element batch, so what the `dedup-show` command displays is exactly what was hashed.

Words are hashed in bulk with numpy, straight from the UTF-8 bytes of the normalised batch, never one
Python call per word: a polynomial hash of each word's bytes (mod 2^64) followed by the MurmurHash3
64-bit finaliser.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: Runs of decimal digits (any script) become one "0".
DIGITS_PATTERN = r"\p{Nd}+"
#: Runs of anything but letters, combining marks and numbers become one space.
NON_WORD_PATTERN = r"[^\p{L}\p{M}\p{N}]+"

#: Bytes of the content hash of a normalised text (blake2b digest size).
EXACT_HASH_BYTES = 16

_SPACE = 0x20
_WORD_BASE = np.uint64(0x100000001B3)  # FNV-64 prime: odd, so every power is odd and invertible
_FMIX_M1 = np.uint64(0xFF51AFD7ED558CCD)
_FMIX_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)


def fmix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser: an avalanching bijection on uint64 (wrapping arithmetic)."""
    x = x ^ (x >> _S33)
    x = x * _FMIX_M1
    x = x ^ (x >> _S33)
    x = x * _FMIX_M2
    return x ^ (x >> _S33)


def normalize_texts(texts: pa.Array) -> pa.LargeStringArray:
    """Normalise a batch of texts (nulls become empty strings); see the module docstring."""
    if not pa.types.is_large_string(texts.type):
        texts = texts.cast(pa.large_string())
    x = pc.fill_null(texts, "")
    x = pc.utf8_lower(x)
    x = pc.replace_substring_regex(x, DIGITS_PATTERN, "0")
    x = pc.replace_substring_regex(x, NON_WORD_PATTERN, " ")
    x = pc.utf8_trim(x, " ")
    if isinstance(x, pa.ChunkedArray):
        x = pa.concat_arrays(x.chunks) if x.num_chunks != 1 else x.chunk(0)
    return x


def normalize_text(text: str) -> str:
    """The normalised form of one text (the batch implementation on a batch of one)."""
    return normalize_texts(pa.array([text], pa.large_string()))[0].as_py()


def _utf8_view(normalized: pa.LargeStringArray) -> tuple[np.ndarray, np.ndarray]:
    """(bytes, offsets) of a large_string array as numpy views, offsets rebased to start at 0."""
    _, offsets_buf, data_buf = normalized.buffers()
    n = len(normalized)
    offsets = np.frombuffer(offsets_buf, dtype=np.int64, count=n + 1, offset=normalized.offset * 8)
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    data = data[offsets[0] : offsets[-1]]
    return data, offsets - offsets[0]


@dataclass
class WordHashes:
    """The words of a batch of normalised texts as 64-bit hashes, flattened.

    The words of document `i` are `hashes[offsets[i]:offsets[i + 1]]`, in text order.
    """

    hashes: np.ndarray  # (total words,) uint64
    offsets: np.ndarray  # (docs + 1,) int64

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)


def word_hashes(normalized: pa.LargeStringArray) -> WordHashes:
    """Hash every word of a normalised batch in a few vectorised passes over its UTF-8 bytes.

    A word is a maximal run of non-space bytes inside one document; its hash is
    fmix64(sum_k (byte_k + 1) * B^k mod 2^64) with B odd (`word_hash_reference` is the same in plain
    Python). With P_i = B^i over the whole buffer, a word starting at byte s is B^-s times the sum of
    (byte_i + 1) * P_i over its bytes, so one multiply, one segmented sum and one gather do the batch.
    """
    data, offsets = _utf8_view(normalized)
    n_docs = len(offsets) - 1
    n = data.size
    if n == 0:
        return WordHashes(np.zeros(0, np.uint64), np.zeros(n_docs + 1, np.int64))
    is_char = data != _SPACE
    boundary = np.zeros(n + 1, bool)  # True where a document starts or ends (words never cross one)
    boundary[offsets] = True
    word_start = is_char.copy()
    word_start[1:] &= ~is_char[:-1] | boundary[1:-1]
    word_end = is_char.copy()  # last byte of a word
    word_end[:-1] &= ~is_char[1:] | boundary[1:-1]
    starts = np.flatnonzero(word_start)
    ends = np.flatnonzero(word_end) + 1
    powers, inverse_powers = _powers(n)
    terms = np.empty(n + 1, np.uint64)
    np.add(data, np.uint64(1), out=terms[:n], dtype=np.uint64)
    terms[:n] *= powers
    terms[n] = 0
    # reduceat over [s0, e0, s1, e1, ...] sums each word and each gap; keep the word sums.
    bounds = np.empty(2 * starts.size, np.int64)
    bounds[0::2] = starts
    bounds[1::2] = ends
    sums = np.add.reduceat(terms, bounds)[0::2] if starts.size else np.zeros(0, np.uint64)
    hashes = fmix64(sums * inverse_powers[starts])
    word_offsets = np.searchsorted(starts, offsets, side="left").astype(np.int64)
    return WordHashes(hashes, word_offsets)


_POWERS_CACHE: tuple[np.ndarray, np.ndarray] | None = None


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(B^i, B^-i) mod 2^64 for i < n, cached per process (batches are about the same size)."""
    global _POWERS_CACHE
    if _POWERS_CACHE is None or _POWERS_CACHE[0].size < n:
        size = max(n, 1 << 16)
        inverse = np.uint64(pow(int(_WORD_BASE), -1, 1 << 64))
        p = np.full(size, _WORD_BASE, dtype=np.uint64)
        q = np.full(size, inverse, dtype=np.uint64)
        p[0] = q[0] = 1
        _POWERS_CACHE = (np.cumprod(p, dtype=np.uint64), np.cumprod(q, dtype=np.uint64))
    return _POWERS_CACHE[0][:n], _POWERS_CACHE[1][:n]


def word_hash_reference(word: str) -> int:
    """Plain-Python hash of one normalised word; the reference `word_hashes` is tested against."""
    mask = (1 << 64) - 1
    h, power = 0, 1
    for byte in word.encode("utf-8"):
        h = (h + (byte + 1) * power) & mask
        power = (power * int(_WORD_BASE)) & mask
    return int(fmix64(np.array([h], np.uint64))[0])


def exact_hashes(normalized: pa.LargeStringArray) -> list[bytes]:
    """A 16-byte blake2b digest of each normalised text: equal digests = exact duplicates."""
    data, offsets = _utf8_view(normalized)
    view = memoryview(data)
    return [
        hashlib.blake2b(view[s:e], digest_size=EXACT_HASH_BYTES).digest()
        for s, e in zip(offsets[:-1].tolist(), offsets[1:].tolist())
    ]


def id_keys(ids: list[str]) -> np.ndarray:
    """A 64-bit key per document id (blake2b), used instead of the string in the LSH arrays.

    Keys, not positions, identify documents in every work file, so nothing depends on the order in
    which shards or rows are read.
    """
    return np.array(
        [int.from_bytes(hashlib.blake2b(i.encode("utf-8"), digest_size=8).digest(), "little") for i in ids],
        dtype=np.uint64,
    )
