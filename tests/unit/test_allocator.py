"""The allocator settings: large blocks are reused instead of faulted in afresh each time."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

COPIES = """
import resource, sys
from detserve import allocator
print(allocator.tune())
data = bytes(300_000)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(200):  # a request copies a photo a few times, then frees the copies
    copies = [bytearray(data), bytearray(data), bytes(data[1:])]
    del copies
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _run(env: dict[str, str]) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", COPIES], capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin", **env}).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the settings are glibc's")
def test_photo_sized_blocks_stop_faulting_in_pages():
    tuned, tuned_faults = _run({})
    untuned, untuned_faults = _run({"DETSERVE_MALLOC_TUNING": "0"})
    assert (tuned, untuned) == ("True", "False")
    # glibc's default gives the freed blocks back and faults them in again: 73 pages a copy
    assert untuned_faults > 200 * 50 and tuned_faults < 500
