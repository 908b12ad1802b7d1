"""Process-level runtime knobs shared by feature builders and model training."""

from __future__ import annotations

import os
from contextlib import contextmanager


def compute_thread_count() -> int:
    """``PLE_COMPUTE_THREADS`` (default 1): intra-op threads for torch and the BLAS under numpy/scipy."""
    return max(int(os.environ.get("PLE_COMPUTE_THREADS", "1")), 1)


@contextmanager
def compute_threads():
    """Pin torch's intra-op threads and the BLAS thread pools (OpenBLAS/MKL under numpy, scipy and scikit-learn)
    to ``compute_thread_count()`` for the block, then restore them.

    The ops in feature fits and the teacher are small (a Mamba step, an LTC cell, a 14-component EM step on a few
    thousand rows); each call waits on every thread. On a busy 2-core machine two threads measured up to 50x
    slower than one for torch, and 18x for scikit-learn's GaussianMixture (42 s vs 2.4 s). LightGBM is not
    affected: it takes its own ``num_threads``. Set it to the step's CPU request in production."""
    import torch
    from threadpoolctl import threadpool_limits

    n = compute_thread_count()
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(before)
