"""Process-level runtime knobs shared by feature builders and model training."""

from __future__ import annotations

import os
from contextlib import contextmanager


@contextmanager
def torch_threads():
    """Pin torch's intra-op threads (``PLE_TORCH_THREADS``, default 1) for the block, then restore them.

    Small recurrent ops (Mamba loop, LTC cell, LightGCN steps) wait on every thread each call: on a busy
    2-core machine two threads measured up to 50x slower than one. Set it to the step's CPU request in
    production."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(int(os.environ.get("PLE_TORCH_THREADS", "1")), 1))
    try:
        yield
    finally:
        torch.set_num_threads(before)
