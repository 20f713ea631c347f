"""Keeping glibc's heap from growing with vocabulary-sized temporaries, for the commands that score.

glibc serves an allocation from its heap instead of a mapping of its own once it is under the *mmap threshold*, and
raises that threshold to the size of every mapped block freed (up to 32 MB). One freed vocabulary-sized tensor (25 MB
for four N of 49,152 float32 logits over 32 rows) and every later one comes from the heap, where the small tensors
that outlive them (each batch's top ids and surprisals) pin the freed space: `futurelens eval` at 100k prefixes
scored its 1k test rows at a 2.7 GB peak after fitting the vocabulary probe, 0.73 GB with this fixed threshold.

Only `eval` and `lens` fix it (for their whole process, it is the C library's setting): they make a few such blocks
a batch. Training makes several every step, and a mapped block costs a page fault per page each time.
"""

from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>
THRESHOLD = 4 << 20
"""Bytes: a vocabulary's float32 logits for a few rows stay in the heap; anything bigger is mapped and unmapped."""


def map_large_blocks(threshold: int = THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes for this process. False where the C library has no such
    setting (not glibc: macOS, musl), which then keeps its own policy."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))


def release_free_memory() -> bool:
    """Hand the heap's free pages back to the system now (glibc's ``malloc_trim(0)``); False where there is no such
    call (not glibc).

    The state cache's forwards free their activations after each batch, but glibc keeps the freed space: batches of
    growing length (a shard is length-sorted) allocate blocks the freed ones do not fit, and the heap grows by about
    a forward's working set every few batches: +300 MB after 8 batches of 32 on the embedded default (measured by
    benchmarks/plan_check.py: the cache stage's peak was 1.4x what it holds). Trimmed after each batch, the process
    holds one forward's working set at a time; the trim takes a millisecond or two.
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True
