"""`engine.core.allocator.keep_freed_memory`: freed activation-sized blocks are reused, not refaulted."""

import subprocess
import sys

PROBE = r"""
import resource, sys, torch
from engine.core.allocator import keep_freed_memory
on = keep_freed_memory() if sys.argv[1] == "on" else False
faults = []
for step in range(2):  # a step's activations: MiB-sized blocks alive together, then all freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    xs = [torch.empty(size << 18).fill_(1.0) for size in (3, 5, 2, 4)]  # size MiB of float32, pages touched
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    del xs
print(on, faults[1])  # the second step: what the first one freed
"""


def _probe(mode: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout.split()
    return out[0] == "True", int(out[1])


def test_freed_blocks_are_reused_without_page_faults():
    on, faults_on = _probe("on")
    assert on, "glibc mallopt should be available on this Linux machine"
    _, faults_off = _probe("off")
    # 14 MiB is 3,584 fresh pages: glibc's defaults give most of them back between steps; kept, most
    # of the second step's blocks reuse pages already touched
    assert faults_off > 2 * faults_on


def test_it_is_idempotent():
    from engine.core.allocator import keep_freed_memory

    assert keep_freed_memory() is keep_freed_memory()
