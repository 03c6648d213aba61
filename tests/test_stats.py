"""analysis/stats.py: every statistic recomputed on known data (scipy.stats, textbook examples,
formulas written out here), and constructed tables whose answer is known in advance."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from analysis import stats
from orchestration import records


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
    path = records.write_predictions(df, tmp_path / records.predictions_path("shuffle/long_term"))
    assert path.relative_to(tmp_path).as_posix() == "predictions/shuffle/long_term.parquet"
    back = records.read_predictions(path)
    assert list(back.columns) == [c.name for c in records.PREDICTION_COLUMNS]
    assert back["video_id"].tolist() == df["video_id"].tolist()
    assert back["label"].tolist() == df["label"].tolist()
    np.testing.assert_array_equal(np.stack(back["top5"].to_numpy()), np.stack(df["top5"].to_numpy()))
    expected = [row.label == row.pred for row in df.itertuples()]
    expected5 = [row.label in list(row.top5) for row in df.itertuples()]
    assert stats.correct(back).tolist() == expected and stats.top5_correct(back).tolist() == expected5
    assert 0 < sum(expected) < sum(expected5) < len(df)            # the data exercises both outcomes
    assert (stats.correct(back) <= stats.top5_correct(back)).all()
    with pytest.raises(ValueError, match="not one of"):
        records.predictions_path("val")


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
        records.write_predictions(damage(_predictions()), tmp_path / "p.parquet")
    assert not (tmp_path / "p.parquet").exists()


def test_read_predictions_validates(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    df = _predictions()
    pq.write_table(pa.Table.from_pandas(df.assign(label_score=2.0), preserve_index=False), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"bad.parquet: 6 label_score"):
        records.read_predictions(tmp_path / "bad.parquet")


# --------------------------------------------------------------------------- paired comparisons

def _pairs(both: int, a_only: int, b_only: int, neither: int, seed: int = 0) -> tuple[pd.Series, pd.Series]:
    a = [True] * both + [True] * a_only + [False] * b_only + [False] * neither
    b = [True] * both + [False] * a_only + [True] * b_only + [False] * neither
    ids = [f"v{i}" for i in range(len(a))]
    order = np.random.default_rng(seed).permutation(len(a))
    sa = pd.Series(a, index=ids)
    sb = pd.Series(b, index=ids).iloc[order]                   # another order: aligned by video id
    return sa, sb


def test_mcnemar_exact_on_known_discordant_counts():
    a, b = _pairs(60, 12, 4, 24)
    r = stats.mcnemar_exact(a, b)
    assert (r.n, r.both, r.a_only, r.b_only, r.neither) == (100, 60, 12, 4, 24)
    assert r.p_value == pytest.approx(sps.binomtest(12, 16, 0.5).pvalue)
    assert r.accuracy_a == 0.72 and r.accuracy_b == 0.64 and r.difference == pytest.approx(0.08)
    assert stats.mcnemar_exact(*_pairs(50, 0, 0, 50)).p_value == 1.0
    # a predictions frame pairs the same way
    frame = pd.DataFrame({"video_id": a.index, "label": 1, "pred": np.where(a.to_numpy(), 1, 2)})
    assert stats.mcnemar_exact(frame, b) == r


def test_mcnemar_exact_refuses_different_videos():
    a, b = _pairs(10, 3, 2, 5)
    b = b.drop(["v0", "v1"])
    b["w9"] = True
    with pytest.raises(ValueError, match="2 only in a, 1 only in b"):
        stats.mcnemar_exact(a, b)


def test_paired_seed_test_matches_ttest_rel():
    a = pd.Series([0.712, 0.705, 0.698, 0.731, 0.690], index=[1, 2, 3, 4, 5])
    b = pd.Series([0.690, 0.701, 0.671, 0.709, 0.688, 0.7], index=[1, 2, 3, 4, 5, 6])   # seed 6: no pair
    r = stats.paired_seed_test(a, b, scale=100)
    ref = sps.ttest_rel(a.to_numpy(), b.loc[[1, 2, 3, 4, 5]].to_numpy())
    ci = ref.confidence_interval(0.95)
    assert r.n == 5 and r.test == stats.TEST_SEEDS
    assert r.p_value == pytest.approx(ref.pvalue)
    assert r.effect == pytest.approx(100 * (a - b.loc[a.index]).mean())
    assert (r.low, r.high) == (pytest.approx(100 * ci.low), pytest.approx(100 * ci.high))
    one = stats.paired_seed_test(a.iloc[:1], b)
    assert one.n == 1 and math.isnan(one.p_value) and one.test == stats.TEST_NONE


def test_holm_textbook_example():
    # Holm (1979) as on Wikipedia's "Holm–Bonferroni method": p = 0.01, 0.04, 0.03, 0.005, alpha 0.05:
    # sorted 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 -> max(0.06, 0.04) = 0.06
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
    assert list(adjusted < 0.05) == [True, False, False, True]      # H1 and H4 rejected
    s = stats.holm(pd.Series([0.5, np.nan, 0.01], index=list("xyz")))
    assert list(s.index) == list("xyz") and math.isnan(s["y"])
    assert s["z"] == pytest.approx(0.02) and s["x"] == pytest.approx(0.5)     # m = 2 finite


def test_holm_matches_its_definition():
    p = np.random.default_rng(1).random(40) ** 3
    order = np.argsort(p)
    m = len(p)
    expected = np.empty(m)
    for rank, i in enumerate(order):
        expected[i] = min(1.0, max((m - j) * p[order[j]] for j in range(rank + 1)))
    adjusted = stats.holm(p)
    np.testing.assert_allclose(adjusted, expected)
    assert np.all(np.diff(adjusted[order]) >= 0) and np.all(adjusted >= p)


def _planted_table(seeds: int, videos: int = 400, nulls: int = 5, seed: int = 0) -> pd.DataFrame:
    """A reference at 70% correct, one row at 55% (planted) and `nulls` rows at 70% whose errors
    fall on other videos (each redraws a random share of the reference's outcomes)."""
    rng = np.random.default_rng(seed)
    frames = []
    for s in range(seeds):
        ref = rng.random(videos) < 0.70
        rows = {"ref": ref}
        redraw = rng.random(videos) < 0.5
        rows["planted"] = np.where(redraw, rng.random(videos) < 0.40, ref)          # 0.5·0.7 + 0.5·0.4 = 0.55
        for k in range(nulls):
            redraw = rng.random(videos) < 0.3 + 0.1 * k
            rows[f"null{k}"] = np.where(redraw, rng.random(videos) < 0.70, ref)
        for name, values in rows.items():
            frames.append(pd.DataFrame({"row": name, "seed": s, "video_id": [f"v{i}" for i in range(videos)],
                                        "correct": values}))
    return pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize("seeds", [1, 3])
def test_compare_marks_exactly_the_planted_row(seeds):
    data = _planted_table(seeds)
    out = stats.compare_to_reference(data, "ref")
    assert list(out["row"]) == ["planted", *(f"null{k}" for k in range(5))]
    assert out.loc[~out["indistinguishable"], "row"].tolist() == ["planted"]
    planted = out.iloc[0]
    assert planted["effect"] < 0 and planted["effect_high"] < 0 and planted["p_holm"] < 1e-4
    assert planted["effect_low"] < -15 < planted["effect_high"]                 # planted: -15 points
    assert planted["same_sign_runs"] == seeds
    assert set(out["test"]) == {stats.TEST_MCNEMAR if seeds == 1 else stats.TEST_VIDEOS}
    assert (out["n_runs"] == seeds).all() and (out["n_videos"] == 400).all()
    assert (out["p_holm"] >= out["p_value"]).all()
    # the same verdict from per-run accuracies alone when seeds are consistent
    if seeds == 3:
        acc = data.groupby(["row", "seed"], sort=False)["correct"].mean().rename("accuracy").reset_index()
        by_run = stats.compare_to_reference(acc, "ref")
        assert by_run["test"].eq(stats.TEST_SEEDS).all()
        np.testing.assert_allclose(by_run["effect"], out["effect"])
        np.testing.assert_allclose(by_run["accuracy"], out["accuracy"])


def test_compare_single_trial_is_mcnemar():
    data = _planted_table(1, videos=200, nulls=2, seed=5)
    out = stats.compare_to_reference(data, "ref").set_index("row")
    series = {r: g.set_index("video_id")["correct"] for r, g in data.groupby("row")}
    for row in ["planted", "null0", "null1"]:
        m = stats.mcnemar_exact(series[row], series["ref"])
        assert out.loc[row, "p_value"] == pytest.approx(m.p_value)
        assert out.loc[row, "effect"] == pytest.approx(100 * m.difference)
        assert out.loc[row, "accuracy"] == pytest.approx(100 * m.accuracy_a)


def test_compare_pooled_seeds_is_a_paired_t_over_videos():
    data = _planted_table(2, videos=300, nulls=1, seed=7).assign(split=1)
    out = stats.compare_to_reference(data, "ref", scale=1.0).set_index("row")
    wide = data.pivot_table(index="video_id", columns=["row", "seed"], values="correct", aggfunc="first").astype(float)
    for row in ["planted", "null0"]:
        d = (wide[row] - wide["ref"]).mean(axis=1)              # per video, over the two seeds
        t = sps.ttest_1samp(d, 0.0)
        ci = t.confidence_interval(0.95)
        assert out.loc[row, "p_value"] == pytest.approx(t.pvalue)
        assert out.loc[row, "effect"] == pytest.approx(d.mean())
        assert out.loc[row, "effect_low"] == pytest.approx(ci.low)
        assert out.loc[row, "effect_high"] == pytest.approx(ci.high)


def test_compare_two_splits_and_missing_runs():
    one, two = _planted_table(2, videos=100, nulls=1, seed=1), _planted_table(2, videos=150, nulls=1, seed=2)
    data = pd.concat([one.assign(split=1), two.assign(split=2)], ignore_index=True)
    data = data[~((data["row"] == "null0") & (data["seed"] == 1) & (data["split"] == 2))]   # a failed run
    out = stats.compare_to_reference(data, "ref", scale=1.0).set_index("row")
    run_acc = data.groupby(["row", "seed", "split"])["correct"].mean()
    diff = (run_acc["null0"] - run_acc["ref"]).dropna()
    assert out.loc["null0", "n_runs"] == 3 and out.loc["planted", "n_runs"] == 4
    assert out.loc["null0", "effect"] == pytest.approx(diff.mean())
    assert out.loc["null0", "n_videos"] == 250
    assert out.loc["planted", "effect"] == pytest.approx((run_acc["planted"] - run_acc["ref"]).mean())


def test_compare_refuses_runs_on_other_videos_and_bad_input():
    data = _planted_table(1, videos=50, nulls=1)
    short = data[~((data["row"] == "null0") & data["video_id"].isin(["v3", "v4"]))]
    with pytest.raises(ValueError, match="lacks 2 of the 50 videos"):
        stats.compare_to_reference(short, "ref")
    with pytest.raises(KeyError, match="reference row 'base'"):
        stats.compare_to_reference(data, "base")
    with pytest.raises(ValueError, match="duplicated"):
        stats.compare_to_reference(pd.concat([data, data.iloc[:1]]), "ref")
    per_run = pd.DataFrame({"row": ["ref", "x"], "seed": [0, 0], "accuracy": [0.7, 0.5]})
    lone = stats.compare_to_reference(per_run, "ref")
    assert lone.loc[0, "test"] == stats.TEST_NONE and bool(lone.loc[0, "indistinguishable"])
    assert lone.loc[0, "effect"] == pytest.approx(-20.0) and math.isnan(lone.loc[0, "p_value"])


# --------------------------------------------------------------------------- hyperparameter importance

W = ("loss.alpha", "loss.beta", "loss.lambda_flow", "loss.lambda_im")
LEVELS = (0.0, 0.0001, 0.001, 0.1)


def _grid(noise: float = 0.0, seeds: int = 1, seed: int = 0) -> pd.DataFrame:
    """A 4⁴ factorial grid: alpha drives the objective, beta and lambda_flow interact (no main
    effect of their own), lambda_im has a small main effect."""
    import itertools

    idx = np.array(list(itertools.product(range(len(LEVELS)), repeat=4)), dtype=float)
    idx = np.repeat(idx, seeds, axis=0)
    c = idx - 1.5                                                            # centred level indices
    y = 0.5 + 0.04 * idx[:, 0] + 0.03 * c[:, 1] * c[:, 2] + 0.005 * idx[:, 3]
    y = y + np.random.default_rng(seed).normal(0.0, noise, len(y))
    frame = pd.DataFrame(np.array(LEVELS)[idx.astype(int)], columns=list(W))
    return frame.assign(**{"val/top1": y, "trainer.seed": np.tile(np.arange(seeds), len(y) // seeds)})


def _axes_trials() -> pd.DataFrame:
    import yaml

    from orchestration.records import REPO
    from orchestration.spaces import grid_points

    space = yaml.safe_load((REPO / "search_spaces" / "coarse.yaml").read_text())
    points = grid_points(space["values"], space["base"], "axes")
    frame = pd.DataFrame(points)[list(W)].astype(float)
    return frame.assign(**{"val/top1": 0.5 + 0.01 * np.arange(len(frame))})


def test_design_of_each_kind():
    factorial = stats.design_of(_grid())
    assert (factorial.kind, factorial.points, factorial.replicates) == ("factorial", 256, (1, 1))
    assert factorial.levels["loss.alpha"] == LEVELS and factorial.base is None
    assert "every interaction can be estimated" in factorial.statement.lower()
    assert "seed noise cannot be told apart" in factorial.statement
    assert "damps the seed noise" in stats.design_of(_grid(seeds=2)).statement

    axes = stats.design_of(_axes_trials())
    assert (axes.kind, axes.points) == ("axes", 21)
    assert axes.base == {w: 0.1 for w in W}
    assert "Only main effects can be estimated" in axes.statement and "no interaction" in axes.statement
    assert "loss.alpha=0.1" in axes.statement

    assert stats.design_of(_grid().iloc[1:]).kind == "other"                   # one trial missing
    assert "neither a full factorial" in stats.design_of(_grid().iloc[1:]).statement
    assert stats.design_of(_grid().iloc[:1]).kind == "point"


def test_grid_anova_is_exact_on_a_known_function():
    out = stats.grid_anova(_grid(), "val/top1").set_index("term")
    var_levels = np.var(np.arange(4))                                         # 1.25
    parts = {"loss.alpha": 0.04 ** 2 * var_levels, "loss.beta × loss.lambda_flow": 0.03 ** 2 * var_levels ** 2,
             "loss.lambda_im": 0.005 ** 2 * var_levels}
    total = sum(parts.values())
    for term, importance in out["importance"].items():
        assert importance == pytest.approx(parts.get(term, 0.0) / total, abs=1e-12), term
    assert out["importance"].sum() == pytest.approx(1.0)
    assert list(out.loc[out["order"] == 2].index) == [f"{a} × {b}" for a, b in
                                                      [(W[0], W[1]), (W[0], W[2]), (W[0], W[3]), (W[1], W[2]),
                                                       (W[1], W[3]), (W[2], W[3])]]
    with pytest.raises(ValueError, match="full factorial.*'axes' design"):
        stats.grid_anova(_axes_trials(), "val/top1")
    const = stats.grid_anova(_grid().assign(**{"val/top1": 0.5}), "val/top1")
    assert const["importance"].isna().all()


def test_grid_anova_averages_seeds_and_ranks_with_noise():
    noisy = _grid(noise=0.01, seeds=2, seed=1)
    out = stats.grid_anova(noisy, "val/top1")
    assert out.loc[out["order"] == 1].sort_values("importance")["term"].iloc[-1] == "loss.alpha"
    assert out.loc[out["order"] == 2].sort_values("importance")["term"].iloc[-1] == "loss.beta × loss.lambda_flow"
    # the grid means of the two seeds are what is decomposed
    means = noisy.groupby(list(W), as_index=False)["val/top1"].mean()
    pd.testing.assert_frame_equal(stats.grid_anova(means, "val/top1"), out)


def test_fanova_finds_the_driving_weight_and_the_interacting_pair():
    trials = _grid(noise=0.005, seed=2)
    out = stats.fanova(trials, "val/top1", n_trees=8, seed=0)
    singles = out[out["order"] == 1].set_index("term")["importance"]
    pairs = out[out["order"] == 2].set_index("term")["importance"]
    assert singles.idxmax() == "loss.alpha" and pairs.idxmax() == "loss.beta × loss.lambda_flow"
    exact = stats.grid_anova(trials, "val/top1").set_index("term")["importance"]
    assert singles["loss.alpha"] == pytest.approx(exact["loss.alpha"], abs=0.1)
    assert pairs["loss.beta × loss.lambda_flow"] == pytest.approx(exact["loss.beta × loss.lambda_flow"], abs=0.1)
    assert out["importance"].sum() == pytest.approx(1.0, abs=1e-6) and (out["std"] >= 0).all()


def test_fanova_pairs_equal_optunas_own_pairwise_marginals():
    """The pairwise terms, recomputed the way Hutter et al. define them through Optuna's own tree
    code (private, so used only here): per tree, V_ij = Var(marginal over i, j) − V_i − V_j."""
    import itertools

    import optuna
    from optuna.distributions import FloatDistribution

    trials = _grid(noise=0.01, seed=3)
    out = stats.fanova(trials, "val/top1", n_trees=4, seed=1).set_index("term")["importance"]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    codes = {w: np.searchsorted(LEVELS, trials[w].to_numpy()).astype(float) for w in W}
    study.add_trials([optuna.trial.create_trial(params={w: codes[w][i] for w in W}, value=v,
                                                distributions={w: FloatDistribution(-0.5, 3.5) for w in W})
                      for i, v in enumerate(trials["val/top1"])])
    evaluator = optuna.importance.FanovaImportanceEvaluator(n_trees=4, seed=1)
    main = evaluator.evaluate(study, params=list(W))
    fitted = evaluator._evaluator
    trees = [t for t in fitted._trees if t.variance > 0]
    columns = dict(zip(sorted(W), fitted._column_to_encoded_columns))
    for w in W:
        assert out[w] == pytest.approx(main[w], abs=1e-12)
    for a, b in itertools.combinations(W, 2):
        per_tree = [(t.get_marginal_variance(np.concatenate([columns[a], columns[b]]))
                     - t.get_marginal_variance(columns[a]) - t.get_marginal_variance(columns[b])) / t.variance
                    for t in trees]
        assert out[f"{a} × {b}"] == pytest.approx(np.mean(per_tree), abs=1e-9), (a, b)


def test_fanova_on_axes_gives_main_effects_only():
    out = stats.fanova(_axes_trials(), "val/top1", n_trees=8, seed=3)
    pd.testing.assert_frame_equal(out, stats.fanova(_axes_trials(), "val/top1", n_trees=8, seed=3))   # seeded
    assert out.loc[out["order"] == 1, "importance"].notna().all()
    assert out.loc[out["order"] >= 2, "importance"].isna().all()
    assert stats.fanova(_grid().iloc[:1], "val/top1")["importance"].isna().all()


def test_marginals_per_design():
    grid = _grid(noise=0.01)
    out = stats.marginals(grid, "val/top1", n_resamples=500, scale=100)
    alpha = out[out["weight"] == "loss.alpha"]
    assert list(alpha["value"]) == list(LEVELS) and (alpha["n"] == 64).all()
    np.testing.assert_allclose(alpha["mean"], 100 * grid.groupby("loss.alpha")["val/top1"].mean().to_numpy())
    assert (alpha["low"] < alpha["mean"]).all() and (alpha["mean"] < alpha["high"]).all()
    assert list(out["weight"].unique()) == list(W)

    axes = _axes_trials()
    out = stats.marginals(axes, "val/top1")
    alpha = out[out["weight"] == "loss.alpha"]
    assert len(alpha) == 6 and (alpha["n"] == 1).all() and alpha["low"].isna().all()
    base_trial = axes[(axes[list(W)] == 0.1).all(axis=1)]["val/top1"].item()
    assert alpha.loc[alpha["value"] == 0.1, "mean"].item() == pytest.approx(base_trial)   # not the 16 trials at 0.1


# --------------------------------------------------------------------------- cost

def test_sweep_cost_sums_per_stage_and_counts_the_uncosted():
    # device_s are GPU-seconds where gpu_fraction > 0 (fraction × wall time), CPU-seconds where it is 0
    runs = pd.DataFrame({
        "stage": ["coarse"] * 4 + ["ablation"] * 4,
        "variant": [None] * 4 + ["rev2net", "rev2net", "i3d", "i3d"],
        "status": ["completed", "completed", "stopped_early", "failed", "completed", "completed", "completed",
                   "completed"],
        "cost/device_s": [900.0, 450.0, 225.0, 15.0, 7200.0, 14400.0, np.nan, 3600.0],
        "cost/clips": [1e5, 5e4, 2.5e4, 1e3, 4e5, 4e5, 3e5, 1e3],
        "cost/gpu_fraction": [0.25, 0.25, 0.25, 0.25, 1.0, 2.0, 1.0, 0.0],
    })
    out = stats.sweep_cost(runs).set_index("stage")
    assert list(out.index) == ["coarse", "ablation"]
    assert out.loc["coarse", "trials"] == 4 and out.loc["coarse", "costed"] == 4
    assert out.loc["coarse", "device_s"] == 1590.0
    assert out.loc["coarse", "gpu_hours"] == pytest.approx(1590.0 / 3600) and out.loc["coarse", "cpu_hours"] == 0
    assert out.loc["coarse", "clips"] == 176_000
    assert out.loc["ablation", "costed"] == 3 and out.loc["ablation", "gpu_hours"] == pytest.approx(2 + 4)
    assert out.loc["ablation", "cpu_hours"] == pytest.approx(1.0)
    assert out.loc["ablation", "device_hours"] == pytest.approx(7.0)
    assert out.loc["ablation", "clips_per_device_s"] == pytest.approx(801e3 / 25200)
    assert stats.gpu_hours(runs) == pytest.approx(out["gpu_hours"].sum())
    per_variant = stats.sweep_cost(runs[runs["stage"] == "ablation"], by=["stage", "variant"])
    assert per_variant[["variant", "costed"]].values.tolist() == [["rev2net", 2], ["i3d", 1]]
    bare = stats.sweep_cost(runs.drop(columns=list(records.COST_METRICS)))
    assert (bare["costed"] == 0).all() and (bare["device_s"] == 0).all() and bare["clips_per_device_s"].isna().all()
    totals = records.cost_totals(runs)     # what the parent run holds: the same sums
    assert totals[records.COST_GPU_HOURS] == pytest.approx(out["gpu_hours"].sum())
    assert totals[records.COST_CPU_HOURS] == pytest.approx(out["cpu_hours"].sum())
    assert totals[records.COST_DEVICE_S] == pytest.approx(out["device_s"].sum())
    assert (totals[records.COST_TRIALS], totals[records.COST_COSTED]) == (8, 7)
