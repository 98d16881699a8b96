"""Shared test settings: deterministic hypothesis profile, few threads."""

from __future__ import annotations

import os

# Multi-threaded OpenBLAS makes statsmodels' small ARIMA fits ~4.5x slower on 2 cores; set it
# before NumPy loads (.ci/run exports it too, in case a plugin imports NumPy first).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci", derandomize=True, deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci")
torch.set_num_threads(1)
