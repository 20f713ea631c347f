"""`futurelens.allocator`: with the fixed mmap threshold, a freed vocabulary-sized tensor goes back to the system even
after glibc would have raised its threshold, where by default it stays in the heap behind a small tensor."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

CHILD = r"""
import sys, torch
from futurelens.allocator import map_large_blocks

def anon_mb():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("RssAnon:")) / 1024

if sys.argv[1] == "fixed":
    assert map_large_blocks()
del_me = torch.ones(25 << 18)  # 25 MB, mapped; freeing it raises glibc's dynamic threshold to 25 MB
del del_me
before = anon_mb()
logits = torch.ones(8 << 18)  # 8 MB of logits
kept = torch.ones(16)  # a batch's small result, allocated after them and kept
del logits
print(anon_mb() - before)
"""


def retained_mb(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True,
                         env={"OMP_NUM_THREADS": "1", "PATH": ""})
    return float(out.stdout)


# Not called here: the setting would hold for the rest of the test session.
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_a_freed_large_tensor_is_returned_to_the_system_with_the_fixed_threshold():
    assert retained_mb("dynamic") > 6  # the premise: by default the freed 8 MB stay resident
    assert retained_mb("fixed") < 1
