"""runner.training.memory: freed activations are reused, not mapped afresh on every step."""
import os
import subprocess
import sys

import pytest

# Four 16 MB tensors made, written and freed together 40 times, as a step's activations are;
# prints the page faults it took (each fresh page is one).
STEPS = """
import resource, sys, torch
from runner.training import memory
if sys.argv[1] == "keep":
    assert memory.keep_freed_memory()
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
before = faults()
for _ in range(40):
    step = [torch.empty(4 * 1024 * 1024).fill_(1.0) for _ in range(4)]
    del step
print(faults() - before)
"""


def page_faults(mode: str) -> int:
    # glibc starts by mapping every block over 128 KB afresh, then adapts its threshold to what
    # the program frees, which may or may not spare these steps; pinned, it never adapts.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(128 * 1024))
    done = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True, env=env)
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_kept_memory_spares_the_page_faults_of_fresh_pages():
    fresh, kept = page_faults("default"), page_faults("keep")
    # 160 blocks of 4,096 pages: mapped afresh they fault every page; kept and reused, only the
    # first steps' do.
    assert fresh > 150 * 4096
    assert kept < 20 * 4096


def test_it_is_applied_once_and_says_so():
    from runner.training import memory
    assert memory.keep_freed_memory() == memory.keep_freed_memory()
