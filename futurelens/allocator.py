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
