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


# --------------------------------------------------------------------------- per-video predictions

def _predictions(n: int = 6, classes: int = 8, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    scores = rng.random((n, classes))
    top5 = np.argsort(-scores, axis=1)[:, :5]
    label = rng.integers(0, classes, n)
    probs = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
    return pd.DataFrame({"video_id": [f"v_{i:03d}.avi" for i in range(n)], "label": label, "pred": top5[:, 0],
                         "top5": list(top5), "label_score": probs[np.arange(n), label]})


def test_predictions_round_trip_and_correctness(tmp_path):
    df = _predictions(40)
    path = stats.write_predictions(df, tmp_path / stats.predictions_path("shuffle/long_term"))
    assert path.relative_to(tmp_path).as_posix() == "predictions/shuffle/long_term.parquet"
    back = stats.read_predictions(path)
    assert list(back.columns) == [c.name for c in stats.PREDICTION_COLUMNS]
    assert back["video_id"].tolist() == df["video_id"].tolist()
    assert back["label"].tolist() == df["label"].tolist()
    np.testing.assert_array_equal(np.stack(back["top5"].to_numpy()), np.stack(df["top5"].to_numpy()))
    expected = [row.label == row.pred for row in df.itertuples()]
    expected5 = [row.label in list(row.top5) for row in df.itertuples()]
    assert stats.correct(back).tolist() == expected and stats.top5_correct(back).tolist() == expected5
    assert 0 < sum(expected) < sum(expected5) < len(df)            # the data exercises both outcomes
    assert (stats.correct(back) <= stats.top5_correct(back)).all()
    with pytest.raises(ValueError, match="not one of"):
        stats.predictions_path("test")


@pytest.mark.parametrize("damage, message", [
    (lambda d: d.drop(columns="label_score"), "missing label_score"),
    (lambda d: d.assign(extra=1), "unknown extra"),
    (lambda d: d.assign(video_id=["a"] * len(d)), "duplicated video_id"),
    (lambda d: d.assign(pred=d["top5"].map(lambda t: t[1])), "pred is not top5"),
    (lambda d: d.assign(top5=[t[:4] if i == 0 else t for i, t in enumerate(d["top5"])]), "same number"),
    (lambda d: d.assign(top5=d["top5"].map(lambda t: np.r_[t[:4], t[0]])), "class twice"),
    (lambda d: d.assign(label_score=d["label_score"] + 1.0), "outside \\[0, 1\\]"),
    (lambda d: d.assign(label=d["label"].astype(float).where(d.index > 0)), "missing value"),
    (lambda d: d.assign(label=["x"] * len(d)), "cannot be read as int64|not convertible"),
])
def test_write_predictions_rejects_malformed(tmp_path, damage, message):
    with pytest.raises(ValueError, match=message):
        stats.write_predictions(damage(_predictions()), tmp_path / "p.parquet")
    assert not (tmp_path / "p.parquet").exists()


def test_read_predictions_validates(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    df = _predictions()
    pq.write_table(pa.Table.from_pandas(df.assign(label_score=2.0), preserve_index=False), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"bad.parquet: 6 label_score"):
        stats.read_predictions(tmp_path / "bad.parquet")
