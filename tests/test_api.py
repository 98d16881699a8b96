"""The public API is pinned (httpx habit): what ``lstmkit`` and ``lstmkit.nn`` export, and the CLI in-process."""

from __future__ import annotations

import pytest

import lstmkit
import lstmkit.nn
from lstmkit import cli


def test_public_api():
    assert {"LSTM", "LSTMCell", "reference", "__version__"} <= set(lstmkit.__all__)
    assert {"LSTM", "LSTMCell"} <= set(lstmkit.nn.__all__)
    for name in lstmkit.__all__:
        assert hasattr(lstmkit, name)
    assert lstmkit.reference.GATES == ("i", "f", "g", "o")


def test_cli_help_and_version(capsys):
    assert cli.main([]) == 2
    assert "reference" in capsys.readouterr().out
    try:
        cli.main(["--version"])
    except SystemExit as e:
        assert e.code == 0
    assert lstmkit.__version__ in capsys.readouterr().out


def test_cli_reference_demo(tmp_path, capsys):
    f = tmp_path / "t.txt"
    f.write_text("to be or not to be, " * 200, encoding="utf-8")
    rc = cli.main(["reference", "--data", str(f), "--minutes", "0.02", "--hidden", "8", "--log-every", "5"])
    assert rc == 0
    assert "sample:" in capsys.readouterr().out


def test_cli_user_error_is_one_line_and_exit_2(tmp_path, capsys):
    assert cli.main(["reference", "--data", str(tmp_path / "nope.txt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lstmkit: error:") and "no such file" in err


def test_wheels_carry_the_cpu_kernels_source():
    """Every file under kernels/csrc (compiled on first use) is package data: a wheel, not only an editable
    install, ships it (without it the compiled CPU kernel cannot build and the slow loop runs)."""
    import fnmatch
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")

    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    kernels = root / "src" / "lstmkit" / "kernels"
    sources = [p.relative_to(kernels).as_posix() for p in (kernels / "csrc").iterdir() if p.is_file()]
    assert sources
    for src in sources:
        assert any(fnmatch.fnmatch(src, pat) for pat in patterns["lstmkit.kernels"]), src
