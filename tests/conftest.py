import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def pytest_configure(config):
    # A suite started in the background of a non-interactive shell (`pytest &`, nohup) inherits SIGINT ignored, and
    # so would every decoder it starts: the Ctrl-C tests would wait on a child that never sees their SIGINT. A
    # caught signal is reset to the default in a child at exec, where Python installs its KeyboardInterrupt.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one)")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def peak_rss_kb():
    """peak_rss_kb(script, *args): the peak resident memory (kB) of `python -c script args`, which must print
    `resource.getrusage(resource.RUSAGE_SELF).ru_maxrss` last. glibc's mmap threshold is pinned so that freed
    big buffers go back to the system instead of being kept by a threshold that adapts to what was seen."""
    def measure(script: str, *args) -> int:
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="262144")
        out = subprocess.run([sys.executable, "-c", script, *map(str, args)], env=env, capture_output=True,
                             text=True, check=True)
        return int(out.stdout.split()[-1])
    return measure
