"""``lstmkit bench``, in process, on tiny shapes (what it reports, not how fast anything is)."""

from __future__ import annotations

import json

import pytest

from lstmkit import bench, cli

TINY = ["--no-default-shapes", "--shape", "3,2,4,1", "--repeats", "1", "--warmup", "0"]


def test_json_rows_cover_variants_and_passes(capsys):
    assert bench.main([*TINY, "--variants", "plain", "layer_norm", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = result["rows"]
    assert {(r["variant"], r["pass"]) for r in rows} == {
        (v, p) for v in ("plain", "layer_norm") for p in ("fwd", "fwd+bwd")
    }
    for r in rows:
        assert r["shape"] == [3, 2, 4, 1]
        assert r["torch_ms"] > 0 and r["lstmkit_ms"] > 0 and r["loop_ms"] > 0
        assert r["vs_torch"] == pytest.approx(r["lstmkit_ms"] / r["torch_ms"])
        assert r["vs_loop"] == pytest.approx(r["lstmkit_ms"] / r["loop_ms"])
    assert result["meta"]["command"].startswith("lstmkit bench --no-default-shapes")
    assert result["meta"]["machine"] and result["meta"]["date"]


def test_cli_prints_a_table(capsys, tmp_path):
    out = tmp_path / "t.md"
    assert cli.main(["bench", *TINY, "--variants", "zoneout+recurrent_dropout", "--no-loop", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| (3, 2, 4, 1) | fwd | zoneout+recurrent_dropout |" in text
    assert "| (3, 2, 4, 1) | fwd+bwd | zoneout+recurrent_dropout |" in text
    assert "loop ms" not in text
    assert out.read_text().strip() == text.strip()


def test_peak_memory_in_a_subprocess():
    mem = bench.peak_memory("torch", (2, 1, 3, 1))
    assert mem["peak_mib"] > 10 and mem["growth_mib"] >= 0


@pytest.mark.parametrize("bad", [["--shape", "1,2"], ["--shape", "0,2,3,1"], ["--variants", "nope"]])
def test_bad_arguments_exit_2(bad):
    with pytest.raises(SystemExit) as e:
        bench.main(["--no-default-shapes", *bad])
    assert e.value.code == 2


def test_no_shape_is_a_clear_error(capsys):
    assert bench.main(["--no-default-shapes"]) == 2
    assert "no shapes" in capsys.readouterr().err


def test_the_router_s_choices_are_reported_on_a_gpu(monkeypatch):
    """On a GPU the report says which path impl="auto" timed and chose for each kind of call (kernels/route.py):
    as plain JSON values, and as lines under the table."""
    import json

    import torch

    from lstmkit.kernels import route

    route.reset()
    k = ("variant layer", torch.device("cuda", 0), torch.bfloat16, 64, 20, 650, None, False, True, "mbarrier")
    route._CHOICE[k] = "cluster"
    route._TIMES[k] = ({"cluster": 0.5, "triton": 0.75}, "triton", route.variant_fields(k))
    try:
        rows = bench.routes()
    finally:
        route.reset()
    assert json.loads(json.dumps(rows)) == rows
    assert rows[0]["device"] == "cuda:0" and rows[0]["dtype"] == "bfloat16" and rows[0]["chosen"] == "cluster"
    result = {"rows": [], "meta": {"date": "d", "machine": "m", "cpu_count": 1, "threads": 1, "torch": "t",
                                   "config": {"repeats": 1, "warmup": 0}, "routes": rows}}  # fmt: skip
    text = bench.format_table(result)
    assert "kind=variant layer, dtype=bfloat16, T_max=64, batch=20, hidden_size=650" in text
    assert "cluster 0.500, triton 0.750 -> **cluster** (fixed policy: triton)" in text
