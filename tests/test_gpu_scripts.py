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
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def test_the_gpu_session_dry_run(tmp_path):
    """``benchmarks/gpu_session.sh`` as the GPU runs it (same commands, options and time limits), each script
    with ``--dry-run`` (``DRY=1``): every script exits 0 and writes its tables."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "DRY": "1", "OUT": str(tmp_path),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # (its python3)
    env.pop("TRITON_INTERPRET", None)  # the dry runs must not need it (gpu_profile.py's once did)
    res = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_session.sh")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=1800)  # fmt: skip (the script's own limits: 1680 s)
    status = (tmp_path / "logs.txt").read_text()
    logs = status[-3000:]
    # (the device tool brings back at most 8 files: run 7 lost two tables to that limit)
    assert len(list(tmp_path.iterdir())) <= 8, sorted(f.name for f in tmp_path.iterdir())
    cluster = _emulation_builds()
    for script in ("gpu_cluster.py", "gpu_user_path.py", "gpu_ln_diag.py", "gpu_routed.py", "gpu_module_gap.py",
                   "gpu.py", "gpu_route.py"):  # fmt: skip
        if script == "gpu_cluster.py" and not cluster:  # (its emulation needs g++ >= 12)
            continue
        assert f"STATUS {script}: exit 0" in status, f"{script} failed:\n{res.stdout[-2000:]}\n{logs}"
    gpu = (tmp_path / "gpu_results.md").read_text()
    for table in ("## Correctness", "## Time, ms", "## Variants: time", "## Plan tuning", "## Forward step ablation",
                  "## Layer-norm forward step ablation"):
        assert table in gpu, f"{table!r} missing from gpu.py's report"
    assert "ERROR" not in gpu and "_error:" not in gpu  # (exit 0 judged the checks; these are the timings')
    assert "DRY RUN" in gpu  # (and it says its times mean nothing)
    assert "## Float32 GEMMs (gemm.mm)" in gpu and "| a b^T (x W_ih^T) | yes |" in gpu  # (tuned, then the kernel)
    assert "| fp32 | GEMMs on the tf32x3 kernel |" in gpu
    assert "timed first (--first 3:fp32)" in status  # (the session's fp32 row, before the checks take the budget)
    user = (tmp_path / "gpu_user_path.md").read_text()
    assert user.count("| yes |") + user.count("| NO |") == 6 and "ERROR" not in user
    # the case for ln_case_replay.py, which runs it through Triton's interpreter
    replay = _run("ln_case_replay.py", str(tmp_path / "ln_case.pt"), timeout=300)
    assert replay.returncode == 0, replay.stderr[-3000:]
    assert "| x grad |" in replay.stdout and "interpreter" in replay.stdout
    diag = (tmp_path / "gpu_ln_diag.md").read_text()
    assert diag.count("| the heuristic |") == 14 and "ERROR" not in diag
    routed = (tmp_path / "gpu_routed.md").read_text()
    # (bf16 and fp16 at the dry shape, and first bf16 at DRY_LN_FIRST: layer norm padded, more rows)
    assert routed.count("| layer norm, routed (ROUTE_LN on) |") == 3 and "ERROR" not in routed
    assert "| (4, 3, 20) | bfloat16 | layer norm, routed (ROUTE_LN on) |" in routed
    # then gpu_route.py's timed routing, appended (the device tool brings back at most 8 files)
    assert routed.startswith("# impl='auto' with the cluster kernels routed")
    assert "# impl='auto' timed routing" in routed
    assert "| (3, 2, 8) | fp32 | fwd+bwd |" in routed and "| (3, 2, 8) | bf16 | fwd |" in routed
    if cluster:
        text = (tmp_path / "gpu_cluster.md").read_text()
        assert "## Forward against float64" in text
        assert "torch's loop in this dtype" in text  # (the variant checks give torch's own error beside ours)
        gap = (tmp_path / "gpu_module_gap.md").read_text()
        assert "| cluster_lstm._run (the launch, Python and driver) |" in gap and "cProfile" in gap
        assert "ERROR" not in gap


def test_gpu_profile_dry_run(tmp_path):
    """``gpu_profile.py`` (run 6's launch costs and profiles; not in the session script while nothing it measures
    changes) still runs: its dry run writes every table."""
    res = _run("gpu_profile.py", "--dry-run", "--out", str(tmp_path / "p.md"), timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    profile = (tmp_path / "p.md").read_text()
    assert "| Triton kernel, 2 arguments |" in profile and "ERROR" not in profile
    for call in ("ours fwd", "cuDNN fwd", "ours fwd, with grad", "cuDNN fwd, with grad", "ours fwd+bwd"):
        assert f"| {call} |" in profile, call


def test_gpu_py_precompiles_the_float32_gemms_and_the_input_norm_anywhere():
    """gpu.py's workers compile the GEMM kernel's tilings with a layer's operand strides, and the fused input
    norm (on the GPU; here the same code in the interpreter): every kernel launches, each task tagged apart."""
    code = ("import sys; sys.path.insert(0, 'benchmarks'); import gpu\n"
            "print(gpu._warm_task(('gemm', 2, 3, 8, (16, 16, 16, 4, 1), 'cpu')))")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    what, n, _, err = eval(res.stdout.strip().splitlines()[-1])  # noqa: S307 - the tuple it printed
    assert n == 5 and err == "" and what.startswith("gemm (2, 3, 8)")
    code = code.replace("('gemm', 2, 3, 8, (16, 16, 16, 4, 1), 'cpu')", "('input_norm', 40, 'bf16', 'cpu')")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    what, n, _, err = eval(res.stdout.strip().splitlines()[-1])  # noqa: S307
    assert n == 2 and err == "" and what == "input norm 40 bf16"


def test_gpu_py_counts_its_plans():
    res = _run("gpu.py", "--count-plans")
    assert res.returncode == 0, res.stderr[-3000:]
    n = int(res.stdout.split()[0])
    assert n > 100, res.stdout  # every tuning candidate at five shapes and three dtypes (177 when written)


def test_the_gpu_session_fits_one_device_call():
    """The session script's time limits (its seven scripts' and the two version probes') sum to at most 580 s, what
    its header promises: one device call may run 600 s (timeout_s), and ``timeout -k 5`` gives a script that
    ignores its signal 5 s more. A limit raised without another lowered fails here, not on a lent GPU."""
    import re

    text = (ROOT / "benchmarks" / "gpu_session.sh").read_text()
    steps = [int(n) for n in re.findall(r"^step (\d+) ", text, re.M)]
    probes = [int(n) for n in re.findall(r"^\$T (\d+) ", text, re.M)]
    assert len(steps) == 7 and len(probes) == 2, (steps, probes)
    assert sum(steps) + sum(probes) <= 580, (steps, probes)
