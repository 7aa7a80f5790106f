"""train.keep_freed_memory: glibc reuses freed tensors' memory instead of mapping fresh pages."""

import subprocess
import sys

import pytest

from asr.memory import _LIBC

PROBE = """
import resource, sys, torch
from asr.train import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.ones(16 << 20)  # 64 MB, once, so that both runs start warm
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.ones(16 << 20)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(_LIBC is None, reason="glibc only")
def test_freed_tensors_are_reused_without_new_page_faults() -> None:
    default, kept = page_faults("default"), page_faults("keep")
    assert default > 10 * 4000  # ten fresh 64 MB mappings, touched page by page (4 KiB pages)
    assert kept < default / 4  # at most a couple of fresh mappings
