"""The GPU session's scripts (issue 6) run end to end on the CPU: their dry runs, in CI.

A GPU is lent for a few minutes at a time and the whole session is one call of ``benchmarks/gpu_session.sh``;
a script that fails on a Python error there costs that session. Each ``--dry-run`` drives the same code on
tiny shapes (the Triton interpreter, the cluster kernels' CPU emulation; ``gpu_user_path.py`` the CPU's own
kernels, its modules and checks), so such an error shows here first.
Timings in a dry run mean nothing and are not looked at; the checks against the float64 references are
(exit status 0). Run in subprocesses: the scripts set module state (``SYNC_CHECK``, tuning switches) for
the rest of their process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="triton is not installed (pip install triton); the GPU scripts need it")

from test_cluster_lstm import _emulation_builds  # noqa: E402  (the same g++ probe as the kernels' own tests)

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("TRITON_INTERPRET", None)  # the dry runs must not need it (gpu_profile.py once did)
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def _ok(res: subprocess.CompletedProcess) -> None:
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"


def test_gpu_py_dry_run(tmp_path):
    out = tmp_path / "gpu.md"
    _ok(_run("gpu.py", "--dry-run", "--out", str(out)))
    text = out.read_text()
    for table in ("## Correctness", "## Time, ms", "## Forward step ablation"):
        assert table in text, f"{table!r} missing from the dry run's report"
    assert "| NO |" not in text
    assert "DRY RUN" in text  # says its times mean nothing


def test_gpu_py_counts_its_plans():
    res = _run("gpu.py", "--count-plans")
    _ok(res)
    n = int(res.stdout.split()[0])
    assert n > 100, res.stdout  # every tuning candidate at five shapes and three dtypes (177 when written)


def test_gpu_profile_dry_run(tmp_path):
    out = tmp_path / "profile.md"
    _ok(_run("gpu_profile.py", "--dry-run", "--out", str(out)))
    text = out.read_text()
    assert "| Triton kernel, 2 arguments |" in text
    assert "| ours fwd+bwd |" in text and "ERROR" not in text


@pytest.mark.skipif(not _emulation_builds(), reason="the cluster kernels' emulation needs g++ >= 12 (C++20, _Float16)")
def test_gpu_cluster_dry_run(tmp_path):
    out = tmp_path / "cluster.md"
    _ok(_run("gpu_cluster.py", "--dry-run", "--out", str(out)))
    assert out.read_text().strip()


def test_gpu_user_path_dry_run(tmp_path):
    out = tmp_path / "user.md"
    _ok(_run("gpu_user_path.py", "--dry-run", "--out", str(out)))
    text = out.read_text()
    assert text.count("| yes |") + text.count("| NO |") == 6 and "ERROR" not in text
