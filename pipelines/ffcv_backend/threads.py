"""Keep torch's thread count across ffcv, which changes it behind the caller's back.

Importing any part of ffcv 1.0.2 runs `torch.set_num_threads(1)` (ffcv/pipeline/compiler.py, at
import), and its Loader sets torch's count to its worker count when built and at every epoch. So a
process that imported ffcv to convert a dataset then trained on one core: the demo, which converts
and then pretrains, ran at half its speed on 2 cores. (On a CPU, torch's threads spinning beside
FFCV's once made the end-to-end rate vary 1.7-87 pairs/s: the caller chooses the count.) Every
function of `pipelines` that imports ffcv or drives its Loader runs under `torch_threads_kept`.
"""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def torch_threads_kept():
    """Restore torch's intra-op thread count of the caller when the block ends (also a decorator)."""
    import torch

    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
