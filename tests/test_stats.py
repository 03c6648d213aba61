"""analysis/stats.py: every statistic recomputed on known data (scipy.stats, textbook examples,
formulas written out here), and constructed tables whose answer is known in advance."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from analysis import stats


# --------------------------------------------------------------------------- intervals

# Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I, method 3
# (Wilson score interval without continuity correction), 95%.
NEWCOMBE = [((81, 263), (0.2553, 0.3662)), ((15, 148), (0.0624, 0.1605)), ((0, 20), (0.0, 0.1611)),
            ((1, 29), (0.0061, 0.1718)), ((29, 29), (0.8830, 1.0))]


@pytest.mark.parametrize("kn, expected", NEWCOMBE)
def test_wilson_matches_newcombe_table(kn, expected):
    low, high = stats.wilson_interval(*kn)
    assert (round(low, 4), round(high, 4)) == expected


def test_wilson_matches_the_formula_and_broadcasts():
    # statsmodels' proportion_confint(method="wilson"), written out (statsmodels is not installed)
    k, n, conf = np.array([0, 3, 50, 97, 100]), np.array([100, 100, 100, 100, 100]), 0.90
    z = sps.norm.ppf(1 - (1 - conf) / 2)
    p = k / n
    denom = 1 + z ** 2 / n
    centre = (p + z ** 2 / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z ** 2 / (4 * n ** 2)) / denom
    low, high = stats.wilson_interval(k, n, confidence=conf)
    np.testing.assert_allclose(low, centre - half, atol=1e-12)
    np.testing.assert_allclose(high, centre + half, atol=1e-12)
    assert np.all(low <= p) and np.all(p <= high)
    assert all(math.isnan(v) for v in stats.wilson_interval(0, 0))
    with pytest.raises(ValueError, match="k <= n"):
        stats.wilson_interval(5, 4)


def test_seed_summary_small_n_and_method():
    assert stats.seed_summary([]).n == 0 and math.isnan(stats.seed_summary([]).mean)
    one = stats.seed_summary([0.7, float("nan")])
    assert (one.n, one.mean) == (1, 0.7) and math.isnan(one.std) and math.isnan(one.low)
    values = np.array([0.61, 0.65, 0.70, 0.66])
    s = stats.seed_summary(values, n_resamples=4000, seed=3)
    assert s.n == 4 and s.mean == pytest.approx(values.mean()) and s.std == pytest.approx(values.std(ddof=1))
    # the same percentile bootstrap written out with scipy
    ref = sps.bootstrap((values,), np.mean, n_resamples=4000, method="percentile",
                        random_state=np.random.default_rng(0)).confidence_interval
    assert s.low == pytest.approx(ref.low, abs=0.01) and s.high == pytest.approx(ref.high, abs=0.01)
    assert values.min() <= s.low < s.mean < s.high <= values.max()
    assert stats.seed_summary(values, n_resamples=4000, seed=3) == s          # seeded
    many = np.linspace(0.5, 0.8, 12) ** 2
    assert stats.seed_summary(many, n_resamples=200, seed=0) != stats.seed_summary(many, n_resamples=200, seed=1)


def test_bootstrap_coverage_and_width():
    rng = np.random.default_rng(0)
    reps, n = 300, 30
    frame = pd.DataFrame({"rep": np.repeat(np.arange(reps), n), "y": rng.normal(0.0, 1.0, reps * n)})
    out = stats.summarize_seeds(frame, ["rep"], "y", n_resamples=2000, seed=1)
    covered = ((out["low"] <= 0.0) & (0.0 <= out["high"])).mean()
    assert 0.88 <= covered <= 0.99, covered                  # nominal 95% (percentile: a little under)
    width = (out["high"] - out["low"]).mean()
    assert width == pytest.approx(2 * 1.96 / math.sqrt(n), rel=0.15)


def test_summarize_seeds_groups_equal_seed_summary():
    frame = pd.DataFrame({"variant": ["a"] * 3 + ["b"] * 2 + ["c"] + ["d"] * 3 + ["e"],
                          "split": [1, 1, 2, 1, 1, 1, 1, 1, 1, 1],
                          "acc": [0.5, 0.6, 0.7, 0.8, 0.9, 0.4, 0.1, 0.2, np.nan, np.nan]})
    out = stats.summarize_seeds(frame, ["variant"], "acc", n_resamples=500, seed=2, scale=100)
    assert list(out["variant"]) == ["a", "b", "c", "d", "e"]
    assert list(out["n"]) == [3, 2, 1, 2, 0]
    for row in out.itertuples():
        s = stats.seed_summary(frame.loc[frame["variant"] == row.variant, "acc"] * 100, n_resamples=500, seed=2)
        for field in ("mean", "std", "low", "high"):
            a, b = getattr(row, field), getattr(s, field)
            assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b), (row.variant, field)
