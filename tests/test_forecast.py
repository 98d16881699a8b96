"""lstmkit.tasks.forecast: the forecaster (both modes, every head), metrics, baselines, backtest, CLI."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

pd = pytest.importorskip("pandas")

from lstmkit.cli import main  # noqa: E402
from lstmkit.data.series import load_series  # noqa: E402
from lstmkit.tasks.forecast import (  # noqa: E402
    LEVELS,
    BacktestConfig,
    ForecastConfig,
    Forecaster,
    backtest,
    tune,
)
from lstmkit.tasks.forecast import baselines as bl  # noqa: E402
from lstmkit.tasks.forecast.metrics import coverage, mae, mase, rmse, smape  # noqa: E402

TINY = dict(horizon=3, context=8, hidden_size=8, max_epochs=3, patience=2, num_samples=50, batch_size=32, ensemble=1)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def frame(n=60, series=("a",), covariate=False, targets=1, seed=0):
    """Quarterly seasonal series with noise; optional covariate and several series."""
    rng = np.random.default_rng(seed)
    parts = []
    for k, sid in enumerate(series):
        t = np.arange(n)
        df = pd.DataFrame({"time": pd.date_range("2000-01-01", periods=n, freq="QS"), "id": sid})
        for d in range(targets):
            df[f"y{d}"] = 10 + k + 0.05 * t + np.sin(2 * np.pi * t / 4 + d) + 0.1 * rng.standard_normal(n)
        if covariate:
            df["promo"] = (t % 5 == 0).astype(float)
            df["y0"] += df["promo"]
        parts.append(df)
    return pd.concat(parts, ignore_index=True)


def data(**kw):
    cov = kw.get("covariate", False)
    return load_series(frame(**kw), time="time", id="id", covariates="promo" if cov else None,
                       target=[f"y{d}" for d in range(kw.get("targets", 1))])  # fmt: skip


def check_forecast(fc, H, D):
    assert fc.quantiles.shape == (len(fc.levels), H, D)
    assert np.all(np.diff(fc.quantiles, axis=0) >= -1e-9)  # quantiles do not cross
    lo, hi = fc.interval(0.95)
    assert np.all(lo <= fc.median) and np.all(fc.median <= hi)
    assert set(LEVELS) <= {round(q, 6) for q in fc.levels}


@pytest.mark.parametrize(
    "mode,dist",
    [("direct", "student_t"), ("direct", "gaussian"), ("direct", "quantile"), ("autoregressive", "gaussian")],
)
def test_every_mode_and_head_gives_intervals(mode, dist):
    d = data(targets=2)
    model = Forecaster(ForecastConfig(**TINY, mode=mode, distribution=dist)).fit(d)
    fc = model.predict(d)[0]
    check_forecast(fc, 3, 2)
    assert (fc.samples is None) == (dist == "quantile")
    if fc.samples is not None:
        assert fc.samples.shape == (50, 3, 2)
    assert fc.time[0] == pd.Timestamp("2015-01-01")  # the quarter after the last one


def test_covariates_several_series_and_future_values():
    d = data(series=("a", "b"), covariate=True)
    model = Forecaster(ForecastConfig(**TINY)).fit(d)
    with pytest.raises(ValueError, match="covariates \\['promo'\\].*--future"):
        model.predict(d)
    fut = pd.DataFrame({"time": list(pd.date_range("2015-01-01", periods=3, freq="QS")) * 2,
                        "id": ["a"] * 3 + ["b"] * 3, "promo": [1.0, 0, 0] * 2})  # fmt: skip
    f = load_series(fut, time="time", id="id", target="promo")
    for s in f.series:
        s.covariates = s.values
    fcs = model.predict(d, f)
    assert len(fcs) == 2
    for fc in fcs:
        check_forecast(fc, 3, 1)


def test_training_is_seeded_and_checkpoint_round_trips(tmp_path):
    d = data()
    cfg = ForecastConfig(**TINY, mode="direct", distribution="quantile")
    a = Forecaster(cfg).fit(d, checkpoint=tmp_path / "m.pt")
    b = Forecaster(cfg).fit(d)
    for pa, pb in zip(a.nets[0].parameters(), b.nets[0].parameters()):
        assert torch.equal(pa, pb)
    c = Forecaster.load(tmp_path / "m.pt")
    np.testing.assert_allclose(c.predict(d)[0].quantiles, a.predict(d)[0].quantiles, rtol=1e-6)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_lstm_learns_a_noisy_cycle_better_than_naive():
    rng = np.random.default_rng(1)
    t = np.arange(160)
    y = np.sin(2 * np.pi * t / 8) + 0.1 * rng.standard_normal(160)
    d = load_series(pd.DataFrame({"y": y}), season=1)
    cfg = ForecastConfig(horizon=4, context=16, hidden_size=16, max_epochs=40, patience=40, num_samples=50, ensemble=1)
    res = backtest(d, cfg, BacktestConfig(windows=3, baselines="naive"))
    s = res.summary()
    assert s["lstm"]["mase"] < 0.6 * s["naive"]["mase"]


def test_bad_configs_are_clear_errors():
    with pytest.raises(ValueError, match="horizon must be at least 1 step, got 0"):
        Forecaster(horizon=0)
    with pytest.raises(ValueError, match="autoregressive mode samples paths"):
        Forecaster(mode="autoregressive", distribution="quantile")
    with pytest.raises(ValueError, match="quantiles must include"):
        Forecaster(mode="direct", distribution="quantile", quantiles=(0.1, 0.5, 0.9))


def test_series_shorter_than_context_plus_horizon_is_an_error():
    d = data(n=13)
    with pytest.raises(ValueError, match="series 'a' has 13 steps, shorter than context 8 \\+ horizon 3"):
        Forecaster(ForecastConfig(**TINY)).fit(d)
    with pytest.raises(ValueError, match="too short for 3 backtest windows"):
        backtest(d, ForecastConfig(**TINY), BacktestConfig(windows=3, baselines=""))


def test_metrics_on_known_values():
    y, f = np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 1.0])
    assert mae(y, f) == pytest.approx(1.0)
    assert rmse(y, f) == pytest.approx(np.sqrt(5 / 3))
    assert mase(y, f, np.array([0.0, 2.0, 4.0]), season=1) == pytest.approx(0.5)
    assert smape(y, f) == pytest.approx(100 * (0 + 2 / 5 + 4 / 4) / 3)
    assert smape(np.zeros(2), np.zeros(2)) == 0.0
    assert coverage(y, y - 1, np.array([2.0, 3.0, 3.5])) == pytest.approx(1.0)
    assert coverage(y, y + 0.5, y + 1) == 0.0


def test_naive_baselines_are_exact():
    y = np.array([1.0, 2, 3, 4, 5, 6, 7, 8])
    q = bl.forecast("naive", y, 3, 4, None)
    np.testing.assert_allclose(q[LEVELS.index(0.5)], [8, 8, 8])
    q = bl.forecast("snaive", y, 6, 4, None)
    np.testing.assert_allclose(q[LEVELS.index(0.5)], [5, 6, 7, 8, 5, 6])
    np.testing.assert_allclose(q[0] + q[-1], 2 * q[2])  # symmetric Gaussian intervals
    assert np.all(q[-1, 4:] - q[0, 4:] > q[-1, :2] - q[0, :2])  # wider in the second season


def test_ets_baseline():
    pytest.importorskip("statsmodels")
    y = data(n=48).series[0].values[:, 0]
    spec = bl.select("ets", y, 4)
    q = bl.forecast("ets", y, 4, 4, spec)
    assert q.shape == (len(LEVELS), 4) and np.isfinite(q).all()
    assert np.all(np.diff(q, axis=0) > 0)
    assert np.abs(q[2] - (y[-4:] + 0.2)).max() < 1.0  # close to last year's values plus the trend


def test_arima_baseline():
    pytest.importorskip("statsmodels")
    rng = np.random.default_rng(0)
    y = np.zeros(60)
    for t in range(1, 60):  # AR(1) around 5
        y[t] = 0.7 * y[t - 1] + rng.standard_normal()
    y += 5
    spec = bl.select("arima", y, 1)
    assert spec["order"][1] == 0 and spec["seasonal_order"] == (0, 0, 0, 0)
    q = bl.forecast("arima", y, 6, 1, spec)
    assert q.shape == (len(LEVELS), 6) and np.all(np.diff(q, axis=0) > 0)
    assert abs(q[2, -1] - y.mean()) < abs(y[-1] - y.mean()) + 0.5  # reverts towards the mean


def test_backtest_layout_and_scores():
    d = data(series=("a", "b"))
    res = backtest(d, ForecastConfig(**TINY), BacktestConfig(windows=2, baselines="naive,snaive"))
    assert res.origins == {"a": [54, 57], "b": [54, 57]}
    assert len(res.rows) == 3 * 2 * 2  # methods x series x windows
    s = res.summary()
    assert set(s) == {"lstm", "naive", "snaive"}
    for m in s.values():
        assert 0 <= m["cov80"] <= m["cov95"] <= 1 and m["mase"] > 0
    assert "| snaive |" in res.table()
    assert json.loads(res.to_json())["summary"]["naive"]["mae"] == pytest.approx(s["naive"]["mae"])
    with pytest.raises(ValueError, match="unknown baseline 'prophet'"):
        backtest(d, ForecastConfig(**TINY), BacktestConfig(baselines="prophet"))


# -- CLI, in-process ------------------------------------------------------------------------


def test_cli_train_predict_backtest(tmp_path, capsys):
    csv = tmp_path / "sales.csv"
    frame(series=("a", "b"), covariate=True).to_csv(csv, index=False)
    flags = ["--data", str(csv), "--time", "time", "--id", "id", "--covariates", "promo", "--target", "y0"]
    tiny = ["--horizon", "3", "--context", "8", "--hidden-size", "8", "--max-epochs", "2", "--ensemble", "1"]
    ckpt = tmp_path / "m.pt"
    assert main(["forecast", "train", *flags, *tiny, "--checkpoint", str(ckpt)]) == 0
    assert ckpt.is_file()
    fut = tmp_path / "future.csv"
    pd.DataFrame({"time": list(pd.date_range("2015-01-01", periods=3, freq="QS")) * 2,
                  "id": ["a"] * 3 + ["b"] * 3, "promo": [0.0, 1, 0] * 2}).to_csv(fut, index=False)  # fmt: skip
    out, png = tmp_path / "fc.csv", tmp_path / "fc.png"
    assert main(["forecast", "predict", "--checkpoint", str(ckpt), "--data", str(csv), "--future", str(fut),
                 "--out", str(out), "--plot", str(png)]) == 0  # fmt: skip
    table = pd.read_csv(out)
    assert list(table.columns) == ["id", "time", "target", "p2.5", "p10", "p50", "p90", "p97.5"]
    assert len(table) == 6 and (table["p10"] <= table["p90"]).all()
    assert (tmp_path / "fc_a.png").stat().st_size > 1000
    res, bpng = tmp_path / "bt.json", tmp_path / "bt.png"
    assert main(["forecast", "backtest", *flags, *tiny, "--windows", "2", "--baselines", "naive,snaive",
                 "--out", str(res), "--plot", str(bpng)]) == 0  # fmt: skip
    assert "| lstm |" in capsys.readouterr().out
    assert set(json.loads(res.read_text())["summary"]) == {"lstm", "naive", "snaive"}
    assert (tmp_path / "bt_b.png").is_file()


def test_cli_backtest_without_data_runs_on_a_bundled_series(capsys):
    pytest.importorskip("statsmodels")
    args = ["--windows", "1", "--baselines", "snaive", "--max-epochs", "1", "--hidden-size", "4", "--ensemble", "1"]
    assert main(["forecast", "backtest", *args]) == 0
    out = capsys.readouterr().out
    assert "backtest of co2" in out and "horizon 12, season 12" in out


def test_cli_bad_input_and_missing_dependency_exit_2(tmp_path, capsys, monkeypatch):
    csv = tmp_path / "bad.csv"
    df = frame()
    df.loc[7, "y0"] = np.nan
    df.to_csv(csv, index=False)
    assert main(["forecast", "backtest", "--data", str(csv), "--time", "time", "--target", "y0"]) == 2
    assert "missing value" in capsys.readouterr().err
    assert main(["forecast", "backtest", "--data", str(csv), "--time", "time", "--target", "y0",
                 "--horizon", "0"]) == 2  # fmt: skip
    monkeypatch.setitem(sys.modules, "pandas", None)
    assert main(["forecast", "backtest", "--data", str(csv)]) == 2
    assert "pip install 'lstmkit[forecast]'" in capsys.readouterr().err


def test_backtest_can_retrain_at_every_origin():
    d = data()
    res = backtest(d, ForecastConfig(**TINY), BacktestConfig(windows=2, stride=2, baselines="", retrain=True))
    assert res.origins == {"a": [55, 57]}  # stride 2: overlapping windows
    assert [fc.median.shape for fc in res.forecasts["lstm"]["a"]] == [(3, 1), (3, 1)]
    assert len(res.rows) == 2


# -- choosing a setting without the held-out windows ------------------------------------------


def test_tune_never_reads_the_held_out_windows():
    d = data(n=60)
    cands = [ForecastConfig(**TINY), ForecastConfig(**{**TINY, "context": 12, "mode": "direct"})]
    a = tune(d, cands, holdout=2, windows=2, baselines="naive")
    assert a.cut == 6 and a.windows == 2 and len(a.scores) == 2 and a.chosen == int(np.argmin(a.scores))
    assert a.results[0].origins == {"a": [48, 51]}  # tuning windows end where the held-out ones begin (54)
    assert "naive" in a.results[0].summary() and "naive" not in a.results[1].summary()
    poisoned = data(n=60)
    poisoned.series[0].values[-6:] *= 100.0  # the two held-out windows
    b = tune(poisoned, cands, holdout=2, windows=2)
    assert b.scores == a.scores and b.chosen == a.chosen
    assert a.best is cands[a.chosen]


def test_tune_scores_a_setting_too_long_for_the_data_as_inf():
    d = data(n=40)
    cands = [ForecastConfig(**{**TINY, "context": 30}), ForecastConfig(**TINY)]
    t = tune(d, cands, holdout=2)
    assert t.scores[0] == float("inf") and t.results[0] is None and t.chosen == 1
    with pytest.raises(ValueError, match="same horizon"):
        tune(d, [ForecastConfig(**TINY), ForecastConfig(**{**TINY, "horizon": 4})], holdout=2)
    with pytest.raises(ValueError, match="no candidate setting fits"):
        tune(d, cands[:1], holdout=2)


def test_refit_trains_again_on_every_window_for_the_best_epoch_count():
    d = data()
    m = Forecaster(ForecastConfig(**{**TINY, "max_epochs": 4, "patience": 4, "refit": True})).fit(d)
    h = m.history[0]
    assert 1 <= h["best_epoch"] <= h["epochs"] and h["refit_epochs"] == h["best_epoch"]
    check_forecast(m.predict(d)[0], 3, 1)


def test_last_value_scaling_makes_zero_the_naive_forecast():
    d = data()
    m = Forecaster(ForecastConfig(**{**TINY, "scaling": "last", "max_epochs": 1})).fit(d)
    w = m._windows(d.series[0], np.array([20, 30]))
    assert torch.all(w["y"][:, -1] == 0)  # the context's last value was subtracted
    z = (d.series[0].values - m.scalers["a"]["t_mean"]) / m.scalers["a"]["t_std"]
    np.testing.assert_allclose(w["loc"][:, 0, 0].numpy(), z[[19, 29], 0], rtol=1e-5)


def test_cli_train_and_predict_without_data_use_the_bundled_default(tmp_path, capsys):
    pytest.importorskip("statsmodels")
    ckpt = tmp_path / "co2.pt"
    tiny = ["--max-epochs", "1", "--hidden-size", "4", "--ensemble", "1", "--num-samples", "20"]
    assert main(["forecast", "train", *tiny, "--checkpoint", str(ckpt)]) == 0
    assert "horizon 12" in capsys.readouterr().out
    assert main(["forecast", "predict", "--checkpoint", str(ckpt)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "series,time,target,p2.5,p10,p50,p90,p97.5"
    assert len(lines) == 1 + 12 and lines[1].startswith("0,2002-01-01,co2,")  # the year after the data
