"""lstmkit.data.series: loading tables into checked series, the bundled series, windows, bad input."""

from __future__ import annotations

import sys

import numpy as np
import pytest

pd = pytest.importorskip("pandas")

from lstmkit.data.series import (  # noqa: E402
    BUILTIN,
    MissingDependencyError,
    builtin_series,
    load_series,
    require,
    season_for_freq,
    windows,
)


def monthly(n=30, start="2020-01-01", **cols):
    t = pd.date_range(start, periods=n, freq="MS")
    df = pd.DataFrame({"time": t, "y": np.arange(n, dtype=float)})
    for k, v in cols.items():
        df[k] = v
    return df


def test_load_infers_frequency_and_season():
    data = load_series(monthly(), time="time", target="y")
    assert data.freq == "MS" and data.season == 12 and data.targets == ["y"]
    s = data.series[0]
    assert s.values.shape == (30, 1) and s.covariates.shape == (30, 0)
    assert s.time[0] == pd.Timestamp("2020-01-01")


def test_targets_default_to_numeric_columns_and_covariates_apart(tmp_path):
    df = monthly(y2=np.ones(30), promo=np.zeros(30))
    path = tmp_path / "x.csv"
    df.to_csv(path, index=False)
    data = load_series(path, time="time", covariates="promo")
    assert data.targets == ["y", "y2"] and data.covariates == ["promo"]
    assert data.series[0].values.shape == (30, 2) and data.series[0].covariates.shape == (30, 1)


def test_several_series_by_id_with_aligned_phase():
    a = monthly(24).assign(store="a")
    b = monthly(20, start="2020-03-01").assign(store="b")
    data = load_series(pd.concat([a, b]), time="time", target="y", id="store")
    assert [s.id for s in data.series] == ["a", "b"]
    assert [len(s) for s in data.series] == [24, 20]
    assert [s.phase0 for s in data.series] == [0, 2]  # b starts two months after a


def test_without_time_column_rows_are_steps():
    data = load_series(pd.DataFrame({"y": [1.0, 2.0, 3.0]}), season=2)
    assert data.freq is None and data.season == 2 and data.series[0].time is None


def test_gap_in_calendar_is_a_missing_value_interpolated_on_request():
    df = monthly(12).drop(index=5)
    with pytest.raises(ValueError, match="missing value.*2020-06-01.*--interpolate"):
        load_series(df, time="time", target="y", freq="MS")
    data = load_series(df, time="time", target="y", freq="MS", interpolate=True)
    assert len(data.series[0]) == 12 and data.series[0].values[5, 0] == pytest.approx(5.0)


def test_missing_value_says_where():
    df = monthly(12)
    df.loc[3, "y"] = np.nan
    with pytest.raises(ValueError, match=r"1 missing value\(s\): 'y' at 2020-04-01.*--interpolate"):
        load_series(df, time="time", target="y")
    data = load_series(df, time="time", target="y", interpolate=True)
    assert data.series[0].values[3, 0] == pytest.approx(3.0)


def test_non_numeric_column_is_an_error():
    df = monthly(12, label=["x"] * 12)
    with pytest.raises(ValueError, match="target column 'label' is not numeric.*row 0 holds 'x'"):
        load_series(df, time="time", target="y,label")


def test_duplicate_timestamps_are_an_error():
    df = pd.concat([monthly(6), monthly(6).iloc[[2]]]).sort_values("time", kind="stable")
    with pytest.raises(ValueError, match="duplicate timestamp 2020-03-01"):
        load_series(df, time="time", target="y")


def test_unsorted_timestamps_are_an_error():
    df = monthly(6).iloc[[0, 1, 3, 2, 4, 5]]
    with pytest.raises(ValueError, match="not sorted: 2020-04-01 comes before 2020-03-01.*sort the table"):
        load_series(df, time="time", target="y")


def test_unknown_column_and_missing_file():
    with pytest.raises(ValueError, match="time column 'date' is not in the table"):
        load_series(monthly(), time="date")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_series("/nonexistent/x.csv")


def test_series_shorter_than_needed_is_an_error():
    data = load_series(monthly(10), time="time", target="y")
    with pytest.raises(ValueError, match="series '0' has 10 steps, shorter than context \\+ horizon = 14"):
        data.check_length(14, "context + horizon")


def test_windows_have_full_context_and_horizon():
    o = windows(10, context=4, horizon=3)
    assert o.tolist() == [4, 5, 6, 7]
    assert windows(10, 4, 3, start=6).tolist() == [6, 7]
    assert windows(10, 4, 3, stop=6).tolist() == [4, 5]


def test_season_for_freq():
    assert [season_for_freq(f) for f in ("MS", "QS-OCT", "D", "YS", None)] == [12, 4, 7, 1, 1]


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_builtin_series_load_offline(name):
    pytest.importorskip("statsmodels")
    data = builtin_series(name)
    s = data.series[0]
    assert data.season == BUILTIN[name].season
    assert np.isfinite(s.values).all() and len(s) >= 100
    assert len(s) > 3 * BUILTIN[name].horizon * BUILTIN[name].windows


def test_missing_optional_dependency_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "statsmodels", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'lstmkit\[forecast\]'"):
        require("statsmodels")
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(MissingDependencyError, match="'pandas'.*lstmkit\\[forecast\\]"):
        load_series("x.csv")
