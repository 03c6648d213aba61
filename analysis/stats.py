"""The statistics a sweep's verdict rests on: intervals, paired comparisons, importances, cost.

Following the rliable library (Agarwal et al., NeurIPS 2021, "Deep RL at the edge of the statistical
precipice"): report intervals, not single numbers; aggregate over seeds before ranking; say when two
results cannot be told apart. Plain functions on numpy, pandas and scipy (Optuna for the random-forest
fANOVA); nothing here reads MLflow.

    intervals      wilson_interval (one accuracy: k correct of n videos), seed_summary and
                   summarize_seeds (mean, sample std and a bootstrap interval over seeds and splits)
    predictions    correct, top5_correct on the per-video artifact each evaluation of a trial logs
                   (its schema, writer and readers live with the record's names in
                   orchestration/records.py: PREDICTION_COLUMNS, write_predictions, load_predictions)
    comparisons    mcnemar_exact (two single trials on the same videos), paired_seed_test (per-seed
                   accuracies), holm (Holm-Bonferroni), compare_to_reference (a whole table at once)
    importance     design_of (what a grid can tell: Design.statement), marginals (mean objective per
                   weight value), grid_anova (exact functional ANOVA of a full factorial grid),
                   fanova (Optuna's random-forest fANOVA, with the pairwise terms added)
    cost           sweep_cost (device-seconds, GPU- and CPU-hours, clips per stage or family), gpu_hours

Accuracies go in as fractions in [0, 1]; functions that print into tables take `scale` (100: percent,
so that an effect reads in accuracy points). Randomness (bootstrap) is seeded: the same call gives the
same interval.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import Any, Hashable, Optional, Sequence, Union

import numpy as np
import pandas as pd
from scipy import stats as sps

from orchestration.records import (COST_CLIPS, COST_DEVICE_S, COST_GPU_FRACTION, LABEL, PRED, TOP5, VIDEO,
                                   WEIGHTS)

ArrayLike = Union[float, int, np.ndarray, pd.Series, Sequence[float]]


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence!r} is not in (0, 1); e.g. 0.95 for a 95% interval")
    return float(sps.norm.ppf(0.5 + confidence / 2.0))


def _quantiles(confidence: float) -> tuple[float, float]:
    _z(confidence)   # validates
    return (1.0 - confidence) / 2.0, 1.0 - (1.0 - confidence) / 2.0


# --------------------------------------------------------------------------- intervals

def wilson_interval(k: ArrayLike, n: ArrayLike, *, confidence: float = 0.95) -> tuple[Any, Any]:
    """The Wilson score interval of a proportion k/n (an accuracy: k correct of n test videos).

    Method: Wilson (1927, "Probable inference, the law of succession, and statistical inference"),
    the interval recommended by Brown, Cai & DasGupta (2001, "Interval estimation for a binomial
    proportion") and Newcombe (1998, method 3), without continuity correction; the same numbers as
    statsmodels' `proportion_confint(k, n, method="wilson")`:

        centre = (k + z²/2) / (n + z²),   half-width = z / (n + z²) · sqrt(k (n − k) / n + z²/4)

    with z the standard normal quantile of 1 − (1 − confidence)/2. Unlike the Wald interval it
    stays inside [0, 1] and keeps its coverage near 0% and 100% accuracy.
    Assumes the n videos are independent draws from the test distribution with a common chance
    of being classified correctly (the model fixed): it is the test-set sampling error of ONE
    trial, not the seed-to-seed spread (use `summarize_seeds` for that).

    `k` and `n` broadcast (numbers or arrays); returns (low, high) as floats for scalar input,
    arrays otherwise; NaN where n = 0. Raises ValueError when k < 0, n < 0 or k > n.
    """
    z = _z(confidence)
    k_arr, n_arr = np.broadcast_arrays(np.asarray(k, dtype=float), np.asarray(n, dtype=float))
    if np.any(k_arr < 0) or np.any(n_arr < 0) or np.any(k_arr > n_arr):
        raise ValueError("wilson_interval needs 0 <= k <= n (k correct of n videos)")
    with np.errstate(invalid="ignore", divide="ignore"):
        centre = (k_arr + z * z / 2.0) / (n_arr + z * z)
        half = z / (n_arr + z * z) * np.sqrt(k_arr * (n_arr - k_arr) / n_arr + z * z / 4.0)
        low = np.where(n_arr > 0, np.clip(centre - half, 0.0, 1.0), np.nan)
        high = np.where(n_arr > 0, np.clip(centre + half, 0.0, 1.0), np.nan)
    if low.ndim == 0:
        return float(low), float(high)
    return low, high


def _bootstrap_mean_interval(values: np.ndarray, *, confidence: float, n_resamples: int,
                             seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Percentile-bootstrap interval of the mean of each row of `values` (G groups × n values).

    The resamples are drawn once per group size n from a generator seeded by (seed, n) and shared by
    the groups of that size (as multinomial counts, so the means are one matrix product); a group's
    interval therefore depends only on its values, `seed` and `n_resamples`, not on the other groups.
    """
    groups, n = values.shape
    if n_resamples < 1:
        raise ValueError(f"n_resamples={n_resamples!r} must be >= 1 (e.g. 10000)")
    lo_q, hi_q = _quantiles(confidence)
    counts = _resample_counts(n, n_resamples, seed)                                         # (B, n)
    low, high = np.empty(groups), np.empty(groups)
    chunk = max(1, 2_000_000 // n_resamples)      # bounds the (chunk, B) matrix of resampled means
    for start in range(0, groups, chunk):
        means = values[start:start + chunk] @ counts.T / n                                  # (chunk, B)
        low[start:start + chunk], high[start:start + chunk] = np.quantile(means, [lo_q, hi_q], axis=1)
    return low, high


@functools.lru_cache(maxsize=8)
def _resample_counts(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """The bootstrap's resamples of n values as multinomial counts (B × n), drawn from a generator
    seeded by (seed, n): the same for every call with these arguments, so they are drawn once
    (a report bootstraps many groups of the same size) and kept read-only."""
    rng = np.random.default_rng([seed, n])
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_resamples).astype(np.float64)
    counts.setflags(write=False)
    return counts


@dataclass(frozen=True)
class SeedSummary:
    """Mean over seeds (and splits), with its spread and interval; see `seed_summary`."""

    n: int          # finite values averaged
    mean: float     # NaN for n = 0
    std: float      # sample standard deviation (ddof=1); NaN for n < 2
    low: float      # percentile-bootstrap interval of the mean; NaN for n < 2
    high: float


def seed_summary(values: ArrayLike, *, confidence: float = 0.95, n_resamples: int = 10_000,
                 seed: int = 0) -> SeedSummary:
    """Mean, sample std (ddof=1) and a percentile-bootstrap interval of the mean of `values` (one
    number per seed, or per seed × split). Non-finite values are dropped and not counted.

    Method: the percentile bootstrap (Efron & Tibshirani 1993, "An Introduction to the Bootstrap",
    Ch. 13): resample the n values with replacement `n_resamples` times, take the mean of each
    resample, report the (1 − confidence)/2 and 1 − (1 − confidence)/2 quantiles; as rliable does
    for its aggregate scores (Agarwal et al. 2021, Sec. 4). Seeded by `seed`: the same values give
    the same interval.
    Assumptions, honestly: the seeds are independent draws of the training randomness. With few
    seeds the percentile bootstrap is too narrow (with n values there are only C(2n−1, n) distinct
    resamples, 10 for n = 3, and the interval never reaches past the smallest and largest value),
    so at n = 3 read it as "the spread of what was seen", not as a 95% guarantee; always print n
    beside it. n = 1 gives the value with no std and no interval; n = 0 gives NaN throughout.
    """
    arr = np.asarray(values, dtype=float).ravel()
    arr = arr[np.isfinite(arr)]
    n = int(arr.size)
    if n == 0:
        return SeedSummary(0, math.nan, math.nan, math.nan, math.nan)
    if n == 1:
        return SeedSummary(1, float(arr[0]), math.nan, math.nan, math.nan)
    low, high = _bootstrap_mean_interval(arr[None, :], confidence=confidence, n_resamples=n_resamples, seed=seed)
    return SeedSummary(n, float(arr.mean()), float(arr.std(ddof=1)), float(low[0]), float(high[0]))


def summarize_seeds(frame: pd.DataFrame, by: Sequence[str], value: str, *, confidence: float = 0.95,
                    n_resamples: int = 10_000, seed: int = 0, scale: float = 1.0) -> pd.DataFrame:
    """`seed_summary` for every group of `by` at once (vectorised: one matrix product per group size).

    Returns one row per group (in order of first appearance, NaN keys kept), with the columns
    `*by, n, mean, std, low, high`: n finite values of `value`, their mean and sample std (ddof=1),
    and the percentile-bootstrap interval of the mean, all multiplied by `scale` (100: percent).
    Each group's numbers equal `seed_summary` of its values (same `seed` and `n_resamples`); n = 1
    has no std and no interval, a group without a finite value has n = 0 and NaN elsewhere.
    See `seed_summary` for the method and its assumptions.
    """
    by = list(by)
    missing = [c for c in [*by, value] if c not in frame]
    if missing:
        raise KeyError(f"summarize_seeds: no column {', '.join(map(repr, missing))} "
                       f"(columns: {', '.join(map(str, frame.columns))})")
    grouped = frame.groupby(by, sort=False, dropna=False)
    codes = grouped.ngroup().to_numpy()
    keys = frame[by].iloc[np.unique(codes, return_index=True)[1]].reset_index(drop=True)
    y = pd.to_numeric(frame[value], errors="coerce").to_numpy(dtype=float) * scale
    ok = np.isfinite(y)
    codes, y = codes[ok], y[ok]
    order = np.argsort(codes, kind="stable")
    codes, y = codes[order], y[order]
    groups = len(keys)
    n = np.bincount(codes, minlength=groups)
    starts = np.concatenate([[0], np.cumsum(n)[:-1]])
    mean = np.full(groups, np.nan)
    std = np.full(groups, np.nan)
    low = np.full(groups, np.nan)
    high = np.full(groups, np.nan)
    sums = np.bincount(codes, weights=y, minlength=groups)
    mean[n > 0] = sums[n > 0] / n[n > 0]
    for size in np.unique(n[n > 1]):
        members = np.flatnonzero(n == size)
        block = y[starts[members][:, None] + np.arange(size)]                  # (groups of this size, size)
        std[members] = block.std(axis=1, ddof=1)
        low[members], high[members] = _bootstrap_mean_interval(block, confidence=confidence,
                                                               n_resamples=n_resamples, seed=seed)
    out = keys.copy()
    out["n"] = n
    out["mean"], out["std"], out["low"], out["high"] = mean, std, low, high
    return out


# --------------------------------------------------------------------------- per-video predictions

def correct(df: pd.DataFrame) -> pd.Series:
    """Per video: top-1 correct (pred == label). A boolean Series with `df`'s own index (so it can be
    assigned as a column); key it by video with `.set_axis(df["video_id"])` when pairing trials."""
    return pd.Series(df[PRED].to_numpy() == df[LABEL].to_numpy(), index=df.index, name="correct")


def top5_correct(df: pd.DataFrame) -> pd.Series:
    """Per video: the label is among `top5`. A boolean Series with `df`'s own index."""
    if len(df) == 0:
        return pd.Series(np.zeros(0, dtype=bool), index=df.index, name="top5_correct")
    classes = np.stack(df[TOP5].to_numpy())                                    # (videos, k)
    hit = (classes == df[LABEL].to_numpy()[:, None]).any(axis=1)
    return pd.Series(hit, index=df.index, name="top5_correct")


# --------------------------------------------------------------------------- paired comparisons

# The columns `compare_to_reference` reads: the row (a configuration: a variant, a weight setting),
# the run's seed and (optionally) split, and either per-video correctness or per-run accuracy.
ROW, SEED, SPLIT, CORRECT, ACCURACY = "row", "seed", "split", "correct", "accuracy"
TEST_MCNEMAR = "McNemar exact, one trial each"
TEST_VIDEOS = "paired t over videos, seeds pooled"
TEST_SEEDS = "paired t over seeds × splits"
TEST_NONE = "no test: fewer than 2 paired runs"


def _correctness(x: Union[pd.Series, pd.DataFrame], name: str) -> pd.Series:
    """Per-video correctness keyed by video id, from a boolean Series indexed by video id, or a
    DataFrame with `video_id` and either `correct` or the predictions' `label` and `pred`."""
    if isinstance(x, pd.DataFrame):
        if VIDEO not in x:
            raise ValueError(f"{name}: a DataFrame needs a {VIDEO!r} column (or pass a Series indexed by video id)")
        if CORRECT in x:
            s = pd.Series(x[CORRECT].to_numpy(), index=pd.Index(x[VIDEO]))
        elif LABEL in x and PRED in x:
            s = pd.Series(correct(x).to_numpy(), index=pd.Index(x[VIDEO]))
        else:
            raise ValueError(f"{name}: a DataFrame needs {CORRECT!r}, or {LABEL!r} and {PRED!r}")
    elif isinstance(x, pd.Series):
        s = x
    else:
        raise TypeError(f"{name}: pass a pandas Series indexed by video id, or a predictions DataFrame")
    if s.index.has_duplicates:
        raise ValueError(f"{name}: {int(s.index.duplicated().sum())} duplicated video id(s); one value per video")
    if s.isna().any():
        raise ValueError(f"{name}: {int(s.isna().sum())} video(s) without a correctness value")
    values = s.to_numpy()
    if values.dtype != bool:
        if not np.isin(values, (0, 1)).all():
            raise ValueError(f"{name}: correctness must be boolean (or 0/1)")
        values = values.astype(bool)
    return pd.Series(values, index=s.index)


@dataclass(frozen=True)
class McNemar:
    """McNemar's exact test of two classifiers on the same videos; see `mcnemar_exact`."""

    n: int              # videos (pairs)
    a_only: int         # videos a gets right and b gets wrong (discordant)
    b_only: int         # videos b gets right and a gets wrong (discordant)
    both: int
    neither: int
    p_value: float      # exact, two-sided
    accuracy_a: float
    accuracy_b: float

    @property
    def difference(self) -> float:
        """accuracy_a − accuracy_b (a fraction; × 100 for accuracy points)."""
        return self.accuracy_a - self.accuracy_b


def mcnemar_exact(a: Union[pd.Series, pd.DataFrame], b: Union[pd.Series, pd.DataFrame]) -> McNemar:
    """McNemar's exact test: do two single trials differ in accuracy on the same test videos?

    Method: McNemar (1947, "Note on the sampling error of the difference between correlated
    proportions"), in its exact (conditional binomial) form, the test Dietterich (1998, "Approximate
    statistical tests for comparing supervised classification learning algorithms") recommends for
    two classifiers evaluated once on one test set. Only the discordant videos carry information:
    under the null hypothesis (equal accuracy) each of the a_only + b_only discordant videos is
    equally likely to favour a or b, so a_only ~ Binomial(a_only + b_only, 1/2);
    p = scipy.stats.binomtest(a_only, a_only + b_only, 0.5), two-sided (1 when nothing is discordant).
    Assumes the videos are independent draws from the test distribution and the two models fixed
    (it is about these two trained models, not about their training seeds).

    `a` and `b`: per-video correctness, each a boolean Series indexed by video id, or a DataFrame
    with `video_id` and `correct` (or a predictions frame: `label` and `pred`). They are aligned by
    video id; ValueError when the video sets differ (saying how many videos only one of them has)
    or an id repeats.
    """
    ca, cb = _correctness(a, "a"), _correctness(b, "b")
    only_a, only_b = ca.index.difference(cb.index), cb.index.difference(ca.index)
    if len(only_a) or len(only_b):
        example = ", ".join(map(repr, [*only_a[:2], *only_b[:2]]))
        raise ValueError(f"the two trials were evaluated on different videos: {len(only_a)} only in a, "
                         f"{len(only_b)} only in b (e.g. {example}); McNemar's test pairs each video's two "
                         "predictions, so both must cover the same test videos")
    x, y = ca.to_numpy(), cb.reindex(ca.index).to_numpy()
    a_only, b_only = int((x & ~y).sum()), int((~x & y).sum())
    p = sps.binomtest(a_only, a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
    n = len(x)
    return McNemar(n=n, a_only=a_only, b_only=b_only, both=int((x & y).sum()), neither=int((~x & ~y).sum()),
                   p_value=float(p), accuracy_a=float(x.mean()) if n else math.nan,
                   accuracy_b=float(y.mean()) if n else math.nan)


def _mcnemar_p(a_only: np.ndarray, b_only: np.ndarray) -> np.ndarray:
    """McNemar's exact two-sided p for arrays of discordant counts: for Binomial(m, 1/2), which is
    symmetric, binomtest's two-sided p is min(1, 2 P(X <= min(a_only, b_only)))."""
    m = a_only + b_only
    return np.where(m > 0, np.minimum(1.0, 2.0 * sps.binom.cdf(np.minimum(a_only, b_only), m, 0.5)), 1.0)


def _t_test(effect: np.ndarray, se: np.ndarray, dof: np.ndarray,
            confidence: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two-sided Student t: the interval effect ± t_{dof} se and the p-value of effect = 0.
    se = 0 gives the point interval and p = 1 (effect 0) or 0; dof < 1 gives NaN."""
    _z(confidence)
    with np.errstate(divide="ignore", invalid="ignore"):
        valid = np.isfinite(effect) & np.isfinite(se) & (dof >= 1)
        safe_dof = np.where(valid, dof, 1.0)
        half = sps.t.ppf(0.5 + confidence / 2.0, safe_dof) * se
        p = 2.0 * sps.t.sf(np.abs(effect / np.where(se > 0, se, 1.0)), safe_dof)
    p = np.where(se > 0, p, np.where(effect == 0, 1.0, 0.0))
    low, high = effect - np.where(se > 0, half, 0.0), effect + np.where(se > 0, half, 0.0)
    return tuple(np.where(valid, v, np.nan) for v in (low, high, p))        # type: ignore[return-value]


def _sign_agreement(diff: np.ndarray, effect: np.ndarray) -> np.ndarray:
    """Per row: the paired runs (non-NaN entries of `diff`, rows × runs) whose sign is the effect's."""
    with np.errstate(invalid="ignore"):
        return (np.sign(diff) == np.sign(effect)[:, None]).sum(axis=1)


def _seed_rows(acc: np.ndarray, ref: int, confidence: float) -> dict[str, np.ndarray]:
    """The paired t test over runs of every row of `acc` (rows × runs, NaN where a run is missing)
    against row `ref`, on the runs both have."""
    paired = np.isfinite(acc) & np.isfinite(acc[ref])[None, :]
    n = paired.sum(axis=1)
    diff = np.where(paired, acc - acc[ref][None, :], np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        effect = np.where(n > 0, np.nansum(diff, axis=1) / np.maximum(n, 1), np.nan)
        sd = np.sqrt(np.nansum((diff - effect[:, None]) ** 2, axis=1) / (n - 1))
        se = np.where(n > 1, sd / np.sqrt(n), np.nan)
        accuracy = np.where(n > 0, np.where(paired, acc, 0.0).sum(axis=1) / np.maximum(n, 1), np.nan)
        reference = np.where(n > 0, (paired * np.nan_to_num(acc[ref])[None, :]).sum(axis=1) / np.maximum(n, 1), np.nan)
    low, high, p = _t_test(effect, se, (n - 1).astype(float), confidence)
    return dict(n_runs=n, n_videos=np.full(len(n), np.nan), accuracy=accuracy, reference_accuracy=reference,
                effect=effect, effect_low=low, effect_high=high, p_value=p,
                same_sign_runs=_sign_agreement(diff, effect),
                test=np.where(n > 1, TEST_SEEDS, TEST_NONE).astype(object))


@dataclass(frozen=True)
class PairedTest:
    """A paired comparison of a against b; see `paired_seed_test`."""

    n: int              # paired runs compared
    effect: float       # mean of a − b over the pairs (× scale)
    low: float          # its interval (NaN for n < 2)
    high: float
    p_value: float      # two-sided (NaN for n < 2)
    test: str


def paired_seed_test(a: pd.Series, b: pd.Series, *, confidence: float = 0.95, scale: float = 1.0) -> PairedTest:
    """Paired t test of two configurations' accuracies over runs (seeds, or seeds × splits).

    `a` and `b` hold one accuracy per run, indexed by the run (its seed, or a (seed, split)
    MultiIndex): the runs both have with finite values are paired, the others dropped (n says how
    many remain). Effect = mean(a − b) × `scale` (100: accuracy points), interval
    effect ± t_{n−1} · sd/√n, p from Student's t with n − 1 degrees of freedom (Student 1908;
    the same numbers as scipy.stats.ttest_rel).
    Why a t test and not the rank or bootstrap tests, at the few seeds a sweep affords: with n = 3
    pairs, Wilcoxon's signed-rank test and the exact sign-flip permutation test cannot give
    p < 0.25 whatever the data, and a paired percentile bootstrap has 10 distinct resamples whose
    interval excludes 0 whenever the three differences share a sign (certainty it does not have).
    The t test can reach p < 0.05 at n = 3, but only for differences that are consistent relative to
    their spread (|t| > 4.30). It assumes the paired differences are independent and normal; each
    accuracy is a mean over many test videos, so close to normal given the seed, but the seed's own
    effect is assumed normal too. With per-video predictions prefer `compare_to_reference`, which
    pairs videos. Fewer than 2 pairs: no test (NaN).
    """
    index = a.index.union(b.index)
    acc = np.vstack([pd.to_numeric(a, errors="coerce").reindex(index).to_numpy(dtype=float),
                     pd.to_numeric(b, errors="coerce").reindex(index).to_numpy(dtype=float)])
    r = _seed_rows(acc, 1, confidence)
    return PairedTest(n=int(r["n_runs"][0]), effect=float(r["effect"][0]) * scale,
                      low=float(r["effect_low"][0]) * scale, high=float(r["effect_high"][0]) * scale,
                      p_value=float(r["p_value"][0]), test=str(r["test"][0]))


def holm(p_values: Union[Sequence[float], np.ndarray, pd.Series]) -> Union[np.ndarray, pd.Series]:
    """Holm-Bonferroni adjusted p-values (Holm 1979, "A simple sequentially rejective multiple test
    procedure"): with the m finite p-values sorted, p_(1) <= ... <= p_(m),

        adjusted p_(i) = min(1, max_{j <= i} (m − j + 1) p_(j)),

    the step-down form, monotone in the raw p-values. Rejecting where adjusted p < alpha controls
    the family-wise error rate at alpha under any dependence between the tests. NaN entries stay
    NaN and do not count in m. A Series gives a Series with the same index, anything else an array.
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    if np.any((p[finite] < 0) | (p[finite] > 1)):
        raise ValueError("holm: p-values must lie in [0, 1]")
    m = int(finite.sum())
    if m:
        order = np.argsort(p[finite], kind="mergesort")
        steps = np.maximum.accumulate((m - np.arange(m)) * p[finite][order])
        adjusted = np.empty(m)
        adjusted[order] = np.minimum(1.0, steps)
        out[finite] = adjusted
    if isinstance(p_values, pd.Series):
        return pd.Series(out, index=p_values.index, name=p_values.name)
    return out


def _ids(frame: pd.DataFrame, columns: list[str]) -> tuple[np.ndarray, pd.DataFrame]:
    """Integer codes of the distinct combinations of `columns` (sorted), and those combinations."""
    codes = frame.groupby(columns, sort=True, dropna=False).ngroup().to_numpy()
    first = np.unique(codes, return_index=True)[1]
    return codes, frame[columns].iloc[first].reset_index(drop=True)


def _describe_run(keys: pd.DataFrame, i: int) -> str:
    return " ".join(f"{c}={keys.iloc[i][c]!r}" for c in keys.columns)


def _video_rows(data: pd.DataFrame, row_code: np.ndarray, rows: int, ref: int, row_ids: Sequence[Hashable],
                confidence: float) -> dict[str, np.ndarray]:
    """The per-video paired comparison of every row against row `ref` (see compare_to_reference)."""
    split_cols = [SPLIT] if SPLIT in data else []
    run_code, run_keys = _ids(data, [SEED, *split_cols])
    video_code, video_keys = _ids(data, [*split_cols, VIDEO])
    split_code, _ = _ids(data, split_cols) if split_cols else (np.zeros(len(data), dtype=int), None)
    runs, videos = len(run_keys), len(video_keys)
    flat = (row_code.astype(np.int64) * runs + run_code) * videos + video_code
    if pd.Index(flat).has_duplicates:
        raise ValueError(f"compare_to_reference: {int(pd.Index(flat).duplicated().sum())} duplicated "
                         f"({ROW}, {SEED}, {', '.join(split_cols + [VIDEO])}) rows; "
                         "one correctness value per video per run")
    values = data[CORRECT].to_numpy()
    if values.dtype != bool and not np.isin(values, (0, 1)).all():
        raise ValueError(f"compare_to_reference: column {CORRECT!r} must be boolean (or 0/1), without missing values")
    split_of_run = np.zeros(runs, dtype=int)
    split_of_run[run_code] = split_code
    split_of_video = np.zeros(videos, dtype=int)
    split_of_video[video_code] = split_code
    c = np.full((rows, runs, videos), np.nan, dtype=np.float32)               # (rows, runs, videos)
    c[row_code, run_code, video_code] = values.astype(np.float32)
    has = ~np.isnan(c)
    present = has.any(axis=2)                                                  # (rows, runs)
    of_split = split_of_video[None, :] == split_of_run[:, None]                # (runs, videos)
    lacking = (present[:, :, None] & of_split[None] & ~has).sum(axis=2)        # (rows, runs)
    if lacking.any():
        bad = np.argwhere(lacking)
        examples = "; ".join(f"row {row_ids[r]!r} ({_describe_run(run_keys, u)}) lacks {lacking[r, u]} of the "
                             f"{of_split[u].sum()} videos" for r, u in bad[:3])
        raise ValueError(f"compare_to_reference: {len(bad)} run(s) were evaluated on a different set of videos than "
                         f"the other runs of their split: {examples}. Paired tests need every run of a split "
                         "evaluated on the same test videos")
    paired = present & present[ref][None, :]
    n_runs = paired.sum(axis=1)
    per_run = of_split.sum(axis=1)                                             # videos of each run's split
    run_acc = np.where(present, np.nansum(c, axis=2, dtype=np.float64) / per_run[None, :], np.nan)
    run_diff = np.where(paired, run_acc - run_acc[ref][None, :], np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = np.maximum(n_runs, 1)
        effect = np.where(n_runs > 0, np.nansum(run_diff, axis=1) / denom, np.nan)
        accuracy = np.where(n_runs > 0, np.where(paired, run_acc, 0.0).sum(axis=1) / denom, np.nan)
        reference = np.where(n_runs > 0, (paired * np.nan_to_num(run_acc[ref])[None, :]).sum(axis=1) / denom, np.nan)
    delta = c - c[ref][None]                                                   # (rows, runs, videos), in {-1, 0, 1}
    delta[~paired] = np.nan
    counted = (~np.isnan(delta)).sum(axis=1)                                   # (rows, videos)
    d = np.where(counted > 0, np.nansum(delta, axis=1, dtype=np.float64) / np.maximum(counted, 1), np.nan)
    se2, dof, n_videos = np.zeros(rows), np.zeros(rows), np.zeros(rows)
    for s in np.unique(split_of_video):
        in_split = split_of_video == s
        n_s = int(in_split.sum())
        runs_s = (paired & (split_of_run == s)[None, :]).sum(axis=1)
        used = runs_s > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            var_s = d[:, in_split].var(axis=1, ddof=1) if n_s > 1 else np.full(rows, np.nan)
            term = (runs_s / np.maximum(n_runs, 1)) ** 2 * var_s / n_s
        se2 += np.where(used, term, 0.0)
        dof += np.where(used, n_s - 1, 0)
        n_videos += np.where(used, n_s, 0)
    low, high, p = _t_test(effect, np.sqrt(se2), np.where(n_runs > 0, dof, 0.0), confidence)
    one = n_runs == 1
    a_only, b_only = (delta == 1).sum(axis=(1, 2)), (delta == -1).sum(axis=(1, 2))
    p = np.where(one, _mcnemar_p(a_only, b_only), p)
    test = np.where(one, TEST_MCNEMAR, np.where(n_runs > 1, TEST_VIDEOS, TEST_NONE)).astype(object)
    p = np.where(n_runs > 0, p, np.nan)
    return dict(n_runs=n_runs, n_videos=np.where(n_runs > 0, n_videos, np.nan), accuracy=accuracy,
                reference_accuracy=reference, effect=effect, effect_low=low, effect_high=high, p_value=p,
                same_sign_runs=_sign_agreement(run_diff, effect), test=test)


def compare_to_reference(data: pd.DataFrame, reference: Hashable, *, alpha: float = 0.05, confidence: float = 0.95,
                         scale: float = 100.0) -> pd.DataFrame:
    """Every row of a table against a reference row: effect, interval, p, Holm-adjusted p, and
    whether the row can be told apart from the reference at `alpha`.

    `data`, long format, one of:
      * per-video: columns `row`, `seed`, optionally `split`, `video_id`, `correct` (bool; build it
        with `correct(read_predictions(...))`): one line per (row, run, test video);
      * per-run: columns `row`, `seed`, optionally `split`, `accuracy` (a fraction): one line per
        (row, run), when no predictions were logged.
    A run is a (seed, split) pair; a row's run is paired with the reference's run with the same seed
    and split (the same seed trains both, the same split's videos test both); runs only one side has
    are left out (`n_runs` says how many pairs remain). Every run of a split must cover the same
    videos (ValueError naming the run and how many videos it lacks).

    Returns one line per row other than the reference, in order of first appearance, with:
      row, n_runs (paired runs), n_videos (distinct test videos compared; NaN per-run),
      accuracy and reference_accuracy (means over the paired runs, × scale), effect (accuracy −
      reference_accuracy, × scale: accuracy points at scale=100) with effect_low, effect_high (its
      `confidence` interval, per row, not adjusted for the many rows), p_value (two-sided, raw),
      p_holm (Holm-adjusted over the rows of this table that have a p-value), indistinguishable
      (p_holm >= alpha, or no test possible: "cannot be told apart from the reference"),
      same_sign_runs (paired runs whose own accuracy difference has the effect's sign), test.

    Which test, and why. The rows that matter most have few seeds (the ablation runs 3 per
    variant), and a test over seeds cannot help there: with 3 paired differences Wilcoxon's
    signed-rank test and the exact sign-flip test cannot give p < 0.25 whatever the data, and a
    paired bootstrap of 3 differences has 10 distinct resamples and an interval that excludes 0
    whenever the three differences share a sign. So with per-video predictions the test pairs
    VIDEOS, pooling the seeds: per test video, the row's correctness minus the reference's,
    averaged over the paired seeds; the mean of these over a split's videos (splits weighted by
    their paired runs) is exactly the difference of the seed-averaged accuracies. Its standard
    error comes from the spread over videos, and a paired t test over videos (Student t,
    videos − splits degrees of freedom, which at hundreds of videos is the z test) gives the
    interval and p. With one paired run (one trial each) this is McNemar's setting, and the p-value
    is McNemar's exact test (as `mcnemar_exact`); the interval stays the paired t interval. These
    p-values are continuous, so Holm's correction still works over a thousand rows (a bootstrap
    p-value cannot go below 1/(resamples + 1)).
    What it assumes: test videos are independent draws from the test distribution, and the
    trained models are taken as given: the verdict is that THESE seeds' models differ on the test
    distribution; the seed-to-seed training variance is not in its error term (3 seeds cannot
    estimate it well). `same_sign_runs` shows whether the seeds agree: a difference that holds in
    1 of 3 seeds is not one to build on, whatever p says.
    Per-run data: the paired t test over seeds × splits of `paired_seed_test` (see there);
    fewer than 2 paired runs give no test (p NaN, indistinguishable True).

    Memory: the per-video path holds a (rows × runs × videos) float32 array, 5 MB for 1296 single-
    seed trials on 1,000 videos.
    """
    if ROW not in data or SEED not in data:
        raise KeyError(f"compare_to_reference: data needs the columns {ROW!r} and {SEED!r} "
                       f"(columns: {', '.join(map(str, data.columns))})")
    per_video = VIDEO in data or CORRECT in data
    needed = [VIDEO, CORRECT] if per_video else [ACCURACY]
    missing = [c for c in needed if c not in data]
    if missing:
        raise KeyError(f"compare_to_reference: data needs {' and '.join(map(repr, needed))} "
                       f"(missing {', '.join(map(repr, missing))}); per-video: {VIDEO}, {CORRECT}; per-run: {ACCURACY}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha={alpha!r} is not in (0, 1)")
    row_code, row_ids = pd.factorize(data[ROW], sort=False)
    if (row_code < 0).any():
        raise ValueError(f"compare_to_reference: {int((row_code < 0).sum())} line(s) without a {ROW!r}")
    matches = np.flatnonzero(pd.Index(row_ids) == reference)
    if not len(matches):
        shown = ", ".join(map(repr, list(row_ids[:8]))) + (", ..." if len(row_ids) > 8 else "")
        raise KeyError(f"compare_to_reference: reference row {reference!r} is not in data (rows: {shown})")
    ref = int(matches[0])
    if per_video:
        r = _video_rows(data, row_code, len(row_ids), ref, row_ids, confidence)
    else:
        split_cols = [SPLIT] if SPLIT in data else []
        run_code, _ = _ids(data, [SEED, *split_cols])
        flat = pd.Index(row_code.astype(np.int64) * (run_code.max() + 1) + run_code)
        if flat.has_duplicates:
            raise ValueError(f"compare_to_reference: {int(flat.duplicated().sum())} duplicated "
                             f"({ROW}, {', '.join([SEED, *split_cols])}) line(s); one accuracy per run")
        acc = np.full((len(row_ids), run_code.max() + 1), np.nan)
        acc[row_code, run_code] = pd.to_numeric(data[ACCURACY], errors="coerce").to_numpy(dtype=float)
        r = _seed_rows(acc, ref, confidence)
    keep = np.arange(len(row_ids)) != ref
    out = pd.DataFrame({"row": list(row_ids[keep])})
    out["n_runs"] = r["n_runs"][keep].astype(int)
    out["n_videos"] = pd.array(np.where(np.isfinite(r["n_videos"][keep]), r["n_videos"][keep], np.nan), dtype="Int64")
    for k in ("accuracy", "reference_accuracy", "effect", "effect_low", "effect_high"):
        out[k] = r[k][keep] * scale
    out["p_value"] = r["p_value"][keep]
    out["p_holm"] = holm(out["p_value"].to_numpy())
    out["indistinguishable"] = ~(out["p_holm"] < alpha)
    out["same_sign_runs"] = r["same_sign_runs"][keep].astype(int)
    out["test"] = r["test"][keep]
    return out


# --------------------------------------------------------------------------- hyperparameter importance

HIGHER_ORDER = "higher order"     # the term that holds every interaction of three or more weights


def _finite_trials(trials: pd.DataFrame, objective: str, weights: Sequence[str]) -> pd.DataFrame:
    """The trials with a finite objective; KeyError/ValueError naming a missing column or a weight
    without a finite value."""
    missing = [c for c in [*weights, objective] if c not in trials]
    if missing:
        raise KeyError(f"no column {', '.join(map(repr, missing))} in the trials "
                       f"(columns: {', '.join(map(str, trials.columns))})")
    y = pd.to_numeric(trials[objective], errors="coerce")
    frame = trials.loc[np.isfinite(y.to_numpy(dtype=float, na_value=np.nan)), list(weights)].copy()
    frame[objective] = y[frame.index].astype(float)
    for w in weights:
        values = pd.to_numeric(frame[w], errors="coerce")
        if not np.isfinite(values.to_numpy(dtype=float, na_value=np.nan)).all():
            raise ValueError(f"weight {w!r} has a missing or non-numeric value in a trial with a finite {objective!r}")
        frame[w] = values.astype(float)
    return frame.reset_index(drop=True)


def _fmt(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class Design:
    """What a set of trials varied, and what can therefore be estimated from it (`statement`)."""

    kind: str                             # "factorial" | "axes" | "point" | "other"
    weights: tuple[str, ...]
    levels: dict[str, tuple[float, ...]]  # the values each weight took, ascending
    points: int                           # distinct weight settings
    trials: int
    replicates: tuple[int, int]           # fewest and most trials at one setting (seeds, repeats)
    base: Optional[dict[str, float]]      # axes: the setting every axis passes through; else None

    @property
    def statement(self) -> str:
        """What this design can and cannot tell, as one paragraph for the report."""
        reps = (f"{self.replicates[0]} trial(s) per point" if self.replicates[0] == self.replicates[1]
                else f"{self.replicates[0]} to {self.replicates[1]} trials per point")
        if self.kind == "point":
            return (f"One weight setting ({self.trials} trial(s)): nothing can be estimated about the effect of the "
                    "weights, only this setting's accuracy.")
        if self.kind == "axes":
            base = ", ".join(f"{w}={_fmt(v)}" for w, v in (self.base or {}).items())
            return (f"One-weight-at-a-time (axes) design around the base point {base}: {self.points} points, {reps}. "
                    "Only main effects can be estimated, each along its own axis with the other weights held at the "
                    "base; no interaction between weights can be estimated (no two weights ever change together), "
                    "and a main effect holds at the base point only: if the weights interact it may differ elsewhere "
                    "on the grid.")
        varying = [w for w in self.weights if len(self.levels[w]) > 1]
        if self.kind == "factorial":
            shape = " × ".join(str(len(self.levels[w])) for w in varying)
            pairs = len(varying) * (len(varying) - 1) // 2
            noise = ("With one trial per point, seed noise cannot be told apart from the interactions: it is spread "
                     "over every term, most of it into the highest-order one." if self.replicates[0] == 1 else
                     "The grid means average the trials at each point, which damps the seed noise in every term.")
            return (f"Full factorial design: {self.points} points ({shape} values of {', '.join(varying)}), {reps}. "
                    f"Every main effect and every interaction can be estimated: grid_anova decomposes the grid means "
                    f"exactly into main effects, the {pairs} pairwise interactions and the higher-order rest. {noise}")
        return (f"{self.points} distinct points, {reps}: neither a full factorial grid nor one weight at a time (an "
                "incomplete grid, e.g. with failed or stopped-early trials left out, or a sampled search such as TPE). "
                "Importances come from fanova's random forest, a model fitted to these trials: main effects can be "
                "estimated where each weight's values were spread over the others, interactions only as far as the "
                "forest fills in the combinations never run, so read them as indicative. The per-value marginal "
                "means mix in the other weights wherever the design is unbalanced.")


def design_of(trials: pd.DataFrame, weights: Sequence[str] = WEIGHTS) -> Design:
    """Classify the design of `trials` over `weights` (each a column of numbers):

      * "factorial": every combination of the values seen is present (the coarse stage's
        search.mode=factorial, 6⁴ = 1296 points; one varying weight counts as factorial);
      * "axes": one weight at a time around a base point: every point differs from the base in at
        most one weight, and there are 1 + Σ (values − 1) points (search.mode=axes, 21 points);
      * "point": one setting; "other": anything else (incomplete grids, sampled searches).
    `Design.statement` says what each can estimate. Pass the trials the analysis will use (e.g.
    completed ones only): a factorial grid with one failed trial left out is "other".
    """
    missing = [w for w in weights if w not in trials]
    if missing:
        raise KeyError(f"no column {', '.join(map(repr, missing))} in the trials")
    frame = trials[list(weights)].astype(float)
    counts = frame.groupby(list(weights), sort=True).size()
    points = counts.index.to_frame(index=False)
    levels = {w: tuple(float(v) for v in np.sort(points[w].unique())) for w in weights}
    n_points = len(points)
    replicates = (int(counts.min()), int(counts.max())) if n_points else (0, 0)
    kind, base = "other", None
    if n_points <= 1:
        kind = "point"
    elif n_points == math.prod(len(v) for v in levels.values()):
        kind = "factorial"
    else:
        candidate = {w: float(points[w].value_counts().idxmax()) for w in weights}
        off_base = (points.to_numpy() != np.array([candidate[w] for w in weights])[None, :]).sum(axis=1)
        if off_base.max() <= 1 and n_points == 1 + sum(len(v) - 1 for v in levels.values()):
            kind, base = "axes", candidate
    return Design(kind=kind, weights=tuple(weights), levels=levels, points=n_points, trials=len(frame),
                  replicates=replicates, base=base)


def marginals(trials: pd.DataFrame, objective: str, *, weights: Sequence[str] = WEIGHTS, confidence: float = 0.95,
              n_resamples: int = 10_000, seed: int = 0, scale: float = 1.0) -> pd.DataFrame:
    """Each weight's marginal: the mean objective per value of the weight, with its interval.

    Returns the columns weight, value, n, mean, std, low, high (`summarize_seeds` per weight and
    value, × `scale`), weights in the order given, values ascending. Trials without a finite
    objective are left out. Which trials a value averages depends on the design (`design_of`):
      * factorial: every trial with that value (the grid is balanced, so this is the main-effect
        marginal: the other weights averaged uniformly over their grid);
      * axes: only the trials of the weight's own axis (the other weights at the base point), since
        pooling would mix the other axes into the base value's mean;
      * other: every trial with that value (confounded with the other weights where unbalanced).
    The interval is the percentile bootstrap of the mean over those trials: with several trials per
    value (factorial) it says how much the mean depends on which trials were averaged, the other
    weights' settings included, not only seed noise; with one trial per value (axes, one seed) there
    is no interval.
    """
    frame = _finite_trials(trials, objective, weights)
    design = design_of(frame, weights)
    parts = []
    for w in weights:
        sub = frame
        if design.kind == "axes" and design.base is not None:
            others = [o for o in weights if o != w]
            at_base = np.all([frame[o].to_numpy() == design.base[o] for o in others], axis=0) if others else True
            sub = frame[at_base]
        parts.append(pd.DataFrame({"weight": w, "value": sub[w].to_numpy(), "_y": sub[objective].to_numpy()}))
    long = pd.concat(parts, ignore_index=True)
    out = summarize_seeds(long, ["weight", "value"], "_y", confidence=confidence, n_resamples=n_resamples,
                          seed=seed, scale=scale)
    out["_order"] = out["weight"].map({w: i for i, w in enumerate(weights)})
    return out.sort_values(["_order", "value"], kind="mergesort").drop(columns="_order").reset_index(drop=True)


def _importance_frame(weights: Sequence[str], single: np.ndarray, pair: dict[tuple[str, str], float],
                      rest: float, single_std: Optional[np.ndarray] = None,
                      pair_std: Optional[dict[tuple[str, str], float]] = None,
                      rest_std: float = math.nan) -> pd.DataFrame:
    rows = [{"term": w, "weights": (w,), "order": 1, "importance": float(single[i]),
             "std": float(single_std[i]) if single_std is not None else math.nan} for i, w in enumerate(weights)]
    rows += [{"term": f"{a} × {b}", "weights": (a, b), "order": 2, "importance": float(v),
              "std": float(pair_std[(a, b)]) if pair_std is not None else math.nan} for (a, b), v in pair.items()]
    rows.append({"term": HIGHER_ORDER, "weights": tuple(weights), "order": 3, "importance": float(rest),
                 "std": rest_std})
    return pd.DataFrame(rows, columns=["term", "weights", "order", "importance", "std"])


def _decompose(table: np.ndarray) -> tuple[float, np.ndarray, dict[tuple[int, int], float]]:
    """The functional ANOVA of a function tabulated on a product grid with equal cell weights
    (Hoeffding/Sobol decomposition): its total variance, the variance of each main effect
    f_i = E[m | x_i] − f_∅ (one per axis) and of each pairwise term
    f_ij = E[m | x_i, x_j] − f_i − f_j − f_∅, keyed by the axis pair."""
    grand = table.mean()
    total = float(((table - grand) ** 2).mean())
    axes = range(table.ndim)

    def marginal(keep: tuple[int, ...]) -> np.ndarray:
        return table.mean(axis=tuple(a for a in axes if a not in keep), keepdims=True)

    mains = [marginal((i,)) - grand for i in axes]
    single = np.array([float((m ** 2).mean()) for m in mains])
    pair = {}
    for i, j in itertools.combinations(axes, 2):
        pair[(i, j)] = float(((marginal((i, j)) - mains[i] - mains[j] - grand) ** 2).mean())
    return total, single, pair


def grid_anova(trials: pd.DataFrame, objective: str, *, weights: Sequence[str] = WEIGHTS) -> pd.DataFrame:
    """Exact functional ANOVA of a full factorial grid: the share of the variance of the grid means
    due to each weight, each pair of weights, and the rest.

    Method: the functional ANOVA (Hoeffding/Sobol) decomposition that fANOVA (Hutter, Hoos &
    Leyton-Brown, ICML 2014, "An efficient approach for assessing hyperparameter importance",
    Sec. 2-3) computes from a random forest, computed here directly on the table of grid means
    instead of a fitted model: with m(x) the mean objective of the trials at grid point x (seeds
    averaged) and the uniform measure over the grid values (each searched value weighs the same),
        f_∅ = mean of m;  f_i(x_i) = mean of m over the others − f_∅;
        f_ij(x_i, x_j) = mean of m over the others − f_i − f_j − f_∅;
        importance of a term = variance of the term over the grid / variance of m.
    The terms are orthogonal, so the main effects, the pairwise terms and HIGHER_ORDER (every
    interaction of three or more weights: 1 − the others) sum to 1. No model, no randomness: for a
    full grid this is the exact value that the random-forest fANOVA approximates.
    Needs a full factorial design (`design_of(...).kind == "factorial"`, ValueError otherwise, with
    the design's statement); weights that do not vary get 0. A constant objective gives NaN.
    Returns the columns term ("loss.alpha", "loss.alpha × loss.beta", HIGHER_ORDER), weights
    (a tuple), order (1, 2, 3 = three or more), importance (a fraction of the variance), std (NaN).
    """
    frame = _finite_trials(trials, objective, weights)
    design = design_of(frame, weights)
    if design.kind != "factorial":
        raise ValueError(f"grid_anova needs a full factorial grid; these trials form a {design.kind!r} design. "
                         f"{design.statement}")
    shape = tuple(len(design.levels[w]) for w in weights)
    codes = tuple(np.searchsorted(np.array(design.levels[w]), frame[w].to_numpy()) for w in weights)
    cell = np.ravel_multi_index(codes, shape)
    sums = np.bincount(cell, weights=frame[objective].to_numpy(), minlength=math.prod(shape))
    means = (sums / np.bincount(cell, minlength=math.prod(shape))).reshape(shape)
    total, single, pair = _decompose(means)
    named = {(weights[i], weights[j]): v for (i, j), v in pair.items()}
    if not total > 0:
        return _importance_frame(weights, np.full(len(weights), np.nan), {k: math.nan for k in named}, math.nan)
    rest = max(total - single.sum() - sum(named.values()), 0.0)
    return _importance_frame(weights, single / total, {k: v / total for k, v in named.items()}, rest / total)


def fanova(trials: pd.DataFrame, objective: str, *, weights: Sequence[str] = WEIGHTS, n_trees: int = 64,
           max_depth: int = 64, seed: int = 0) -> pd.DataFrame:
    """Random-forest functional ANOVA (fANOVA) of the weights: the main effects from Optuna's
    `FanovaImportanceEvaluator`, the pairwise terms from the same forest.

    Method: Hutter, Hoos & Leyton-Brown (ICML 2014): fit a random forest to (weights → objective)
    over the trials and decompose each tree's prediction, under the uniform measure over the
    search space, into main effects and interactions; a term's importance is the fraction of the
    tree's variance it explains, averaged over the trees (std: its spread over the trees).
    Optuna (5.x) gives only the main effects (`evaluate` returns one number per parameter, and its
    pairwise machinery is private). So: the trials become an Optuna study and Optuna's evaluator
    gives the main effects; the pairwise terms come from the same forest refitted here with the
    settings and seed Optuna uses (scikit-learn's RandomForestRegressor: `n_trees`, `max_depth`,
    min_samples_split=2, min_samples_leaf=1, on the same encoded columns in Optuna's order), each
    tree decomposed exactly: every split of a tree trained on value indices falls on a multiple of
    0.5, so a tree is constant on the half-unit cells of the search box and its predictions at the
    cell centres, equally weighted, are the whole function; the decomposition of that table
    (as in `grid_anova`) gives V_i, V_ij and the rest per tree. That this forest is Optuna's is
    checked: its main effects must equal Optuna's (RuntimeError otherwise, e.g. if Optuna changes how
    it fits). HIGHER_ORDER is 1 − the main and pairwise terms, per tree.

    Encoding, and why: each weight enters as the index of its value among the values the trials
    took (0, 1, ..., L−1), as a FloatDistribution over [−0.5, L − 0.5]. A forest's splits depend
    only on the order of a feature's values, so the encoding only sets the measure that fANOVA
    integrates over, and this one gives every searched value the same weight, which is the measure
    of the grid itself (a factorial grid samples each value equally). A log-float distribution cannot
    hold the value 0 that every weight takes, and any stand-in (0 → 1e-5) would set 0's share of the
    measure by its arbitrary distance from 1e-4, besides the unequal decades of the grid
    (1e-3 → 0.1 is two). A categorical distribution is one-hot encoded by Optuna, whose marginals
    then integrate over 2^6 one-hot patterns per weight of which 6 are real values, and it loses the
    order the forest can use to fill in combinations never run.
    Uses the trials with a finite objective; fewer than 2 or a constant objective give NaN. On an
    axes design the forest must extrapolate to combinations never run: the pairwise and higher-order
    terms are NaN there (not estimable; see `Design.statement`), the main effects are model-based.
    For a full factorial grid prefer `grid_anova`: exact, and instant where Optuna's evaluator walks
    its trees in Python. Returns the columns of `grid_anova`, with std over the trees.
    """
    import optuna
    from optuna.distributions import FloatDistribution
    from sklearn.ensemble import RandomForestRegressor

    frame = _finite_trials(trials, objective, weights)
    design = design_of(frame, weights)
    names = list(weights)
    y = frame[objective].to_numpy()
    pairs = list(itertools.combinations(names, 2))
    if len(frame) < 2 or np.ptp(y) == 0:
        return _importance_frame(names, np.full(len(names), np.nan), {p: math.nan for p in pairs}, math.nan)
    codes = {w: np.searchsorted(np.array(design.levels[w]), frame[w].to_numpy()).astype(float) for w in names}
    distributions = {w: FloatDistribution(-0.5, len(design.levels[w]) - 0.5) for w in names}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(direction="maximize")
        study.add_trials([optuna.trial.create_trial(params={w: codes[w][i] for w in names}, distributions=distributions,
                                                    value=float(y[i])) for i in range(len(y))])
        evaluator = optuna.importance.FanovaImportanceEvaluator(n_trees=n_trees, max_depth=max_depth, seed=seed)
        main = evaluator.evaluate(study, params=names)
    finally:
        optuna.logging.set_verbosity(verbosity)
    theirs = np.array([main[w] for w in names])

    order = sorted(names)                         # Optuna orders the parameters by name
    forest = RandomForestRegressor(n_estimators=n_trees, max_depth=max_depth, min_samples_split=2, min_samples_leaf=1,
                                   random_state=seed).fit(np.column_stack([codes[w] for w in order]), y)
    shape = tuple(2 * len(design.levels[w]) for w in order)
    centres = [np.arange(n) * 0.5 - 0.25 for n in shape]   # of the half-unit cells of [−0.5, L − 0.5]
    mesh = np.stack(np.meshgrid(*centres, indexing="ij"), axis=-1).reshape(-1, len(order))
    single, pair = [], []
    for tree in forest.estimators_:
        total, s, p = _decompose(tree.predict(mesh).reshape(shape))
        if total > 0:                             # as Optuna: trees without variance are left out
            single.append(s / total)
            pair.append({(order[i], order[j]): v / total for (i, j), v in p.items()})
    position = [order.index(w) for w in names]
    ours = np.array(single)[:, position]                                      # (trees, weights)
    if not np.allclose(ours.mean(axis=0), theirs, rtol=1e-6, atol=1e-9):
        raise RuntimeError(f"optuna {optuna.__version__}: main effects of the refitted forest "
                           f"({ours.mean(axis=0)}) differ from its fANOVA evaluator's ({theirs}); the pairwise "
                           "terms would not belong to Optuna's forest (has Optuna changed how it fits?)")
    single_std = ours.std(axis=0)
    if design.kind == "axes":
        return _importance_frame(names, theirs, {p: math.nan for p in pairs}, math.nan, single_std=single_std)
    by_pair = {(a, b): np.array([t[(a, b)] if (a, b) in t else t[(b, a)] for t in pair]) for a, b in pairs}
    rest = np.clip(1.0 - ours.sum(axis=1) - sum(by_pair.values()), 0.0, None)
    return _importance_frame(names, theirs, {p: v.mean() for p, v in by_pair.items()}, float(rest.mean()),
                             single_std=single_std, pair_std={p: v.std() for p, v in by_pair.items()},
                             rest_std=float(rest.std()))


# --------------------------------------------------------------------------- cost

def _cost_values(runs: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """device_s, clips, gpu_fraction as float arrays (NaN where absent) and the mask of trials that
    logged all three as finite numbers."""
    def column(name: str) -> np.ndarray:
        if name not in runs:
            return np.full(len(runs), np.nan)
        return pd.to_numeric(runs[name], errors="coerce").to_numpy(dtype=float, na_value=np.nan)

    device_s, clips, fraction = column(COST_DEVICE_S), column(COST_CLIPS), column(COST_GPU_FRACTION)
    costed = np.isfinite(device_s) & np.isfinite(clips) & np.isfinite(fraction)
    return device_s, clips, fraction, costed


def gpu_hours(runs: pd.DataFrame) -> float:
    """GPU-hours a set of trials used: Σ cost/device_s / 3600 over the trials that logged the cost
    metrics with a GPU (cost/gpu_fraction > 0; their device-seconds are GPU-seconds, see
    orchestration.records.COST_DEVICE_S). Trials without the metrics are not counted (the total is
    then a lower bound; `sweep_cost` says how many)."""
    device_s, _, fraction, costed = _cost_values(runs)
    return float(device_s[costed & (fraction > 0)].sum() / 3600.0)


def sweep_cost(runs: pd.DataFrame, by: Sequence[str] = ("stage",)) -> pd.DataFrame:
    """What a sweep cost, per group of `by` (a stage, or ("stage", <a family or variant column>)).

    `runs` is a `load_runs` frame (one row per trial, every status: a failed or stopped-early trial
    held its device too). Returns one row per group (in order of first appearance) with:
    `*by`, trials, costed (trials that logged all three cost metrics; the sums count only them, so
    where costed < trials they are lower bounds), device_s (Σ cost/device_s), device_hours,
    gpu_hours (Σ cost/device_s / 3600 over the trials with a GPU: a trial on a quarter of a GPU for
    an hour logged 900 device-seconds, 0.25 GPU-hours), cpu_hours (the same over the trials without
    a GPU, whose device-seconds are CPU-seconds), clips (Σ cost/clips), clips_per_device_s.
    The definitions are orchestration.records.COST_DEVICE_S's.
    """
    by = list(by)
    missing = [c for c in by if c not in runs]
    if missing:
        raise KeyError(f"sweep_cost: no column {', '.join(map(repr, missing))} to group by")
    device_s, clips, fraction, costed = _cost_values(runs)
    frame = runs[by].copy()
    frame["trials"] = 1
    frame["costed"] = costed.astype(int)
    frame["device_s"] = np.where(costed, device_s, 0.0)
    frame["gpu_hours"] = np.where(costed & (fraction > 0), device_s, 0.0) / 3600.0
    frame["cpu_hours"] = np.where(costed & ~(fraction > 0), device_s, 0.0) / 3600.0
    frame["clips"] = np.where(costed, clips, 0.0)
    sums = ["trials", "costed", "device_s", "gpu_hours", "cpu_hours", "clips"]
    out = frame.groupby(by, sort=False, dropna=False)[sums].sum().reset_index()
    out.insert(out.columns.get_loc("device_s") + 1, "device_hours", out["device_s"] / 3600.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["clips_per_device_s"] = np.where(out["device_s"] > 0, out["clips"] / out["device_s"], np.nan)
    return out
